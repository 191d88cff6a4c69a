#!/usr/bin/env python3
"""How far glance's bf16 CPU path (AVX512-BF16 matmuls, f32 activations) is from its f32 path,
which equals transformers: every parity fixture under tests/fixtures and the real-size
random-weight models of bench-models/, run on the same photos in both precisions.

Prints per model and task: captions identical (of N), top-1 labels identical, the largest
difference of a top-1 score, and the mean. Run after `cargo build --release`:

    python3 benches/dtype_agreement.py [--glance target/release/glance] [--images ../shared/images]
        [--bench-models bench-models]

Standard library only; the glance binary does the work.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CAPTION_FIXTURES = [("blip-tiny", []), ("blip-tiny", ["--num-beams", "3"]), ("swin-gpt2-tiny", []),
                    ("vit-bert-tiny", [])]
CLASSIFY_FIXTURES = ["clip-tiny", "siglip-tiny", "vit-cls-tiny", "convnext-cls-tiny", "resnet-cls-tiny"]
CAPTION_BENCH = [("blip-base", []), ("blip-base", ["--num-beams", "3"]), ("vit-gpt2", [])]
CLASSIFY_BENCH = ["clip-b32", "siglip-b16"]
ZERO_SHOT_LABELS = "cat,dog,horse,car,motorcycle,coffee,coins,rocket,moon,astronaut,camera,text,tree,sea,mountain"


def run(glance, args, dtype, images):
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
        out = f.name
    cmd = [glance] + args + ["--dtype", dtype, "--quiet", "-o", out, images]
    env = dict(os.environ, GLANCE_CACHE="off", HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    records = {}
    for line in open(out, encoding="utf-8"):
        if line.strip():
            r = json.loads(line)
            records[r["file"]] = r
    os.unlink(out)
    return records


def compare(name, kind, glance, args, images):
    full, half = run(glance, args, "f32", images), run(glance, args, "bf16", images)
    common = sorted(set(full) & set(half))
    field = "caption" if kind == "caption" else "label"
    same = sum(full[k].get(field) == half[k].get(field) for k in common)
    row = f"{name:<34} {field + 's':<9} {same:>3}/{len(common):<3}"
    if kind != "caption":
        deltas = [abs(full[k]["score"] - half[k]["score"]) for k in common
                  if full[k].get("score") is not None and half[k].get("score") is not None]
        if deltas:
            row += f"  top-1 score |bf16 - f32| max {max(deltas):.2e} mean {sum(deltas) / len(deltas):.2e}"
    print(row, flush=True)
    return same, len(common)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glance", default="target/release/glance")
    ap.add_argument("--images", default="../shared/images")
    ap.add_argument("--bench-models", default="bench-models")
    ap.add_argument("--tokens", default="20", help="new tokens per caption (pinned, default 20)")
    a = ap.parse_args()
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    pinned = ["--min-new-tokens", a.tokens, "--max-new-tokens", a.tokens]
    jobs = []
    for model, extra in CAPTION_FIXTURES:
        jobs.append((f"fixture {model} {' '.join(extra)}", "caption",
                     ["caption", "-m", f"tests/fixtures/{model}", "--max-new-tokens", a.tokens] + extra))
    for model in CLASSIFY_FIXTURES:
        labels = ["--labels", ZERO_SHOT_LABELS] if model in ("clip-tiny", "siglip-tiny") else []
        jobs.append((f"fixture {model}", "classify", ["classify", "-m", f"tests/fixtures/{model}"] + labels))
    for model, extra in CAPTION_BENCH:
        path = os.path.join(a.bench_models, model)
        if os.path.isdir(path):
            jobs.append((f"real-size {model} {' '.join(extra)}", "caption", ["caption", "-m", path] + pinned + extra))
    labels_file = "benches/labels-1000.txt"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(open(labels_file, encoding="utf-8").read().splitlines()[:100]))
        labels100 = f.name
    for model in CLASSIFY_BENCH:
        path = os.path.join(a.bench_models, model)
        if os.path.isdir(path):
            jobs.append((f"real-size {model} (100 labels)", "classify",
                         ["classify", "-m", path, "--labels-file", labels100]))
    print(f"glance f32 vs bf16 on {a.images}")
    for name, kind, args in jobs:
        compare(name, kind, a.glance, args, a.images)
    os.unlink(labels100)


if __name__ == "__main__":
    main()
