#!/usr/bin/env python3
"""Time Hugging Face transformers zero-shot classifying a folder of images with CLIP or SigLIP,
end to end (the Python side of benches/bench.sh's zero-shot cases; glance is the other side).

Timed separately:
* ``import_s``: importing torch and transformers;
* ``load_s``: loading the processor and the model (``AutoModel``: ``CLIPModel`` / ``SiglipModel``)
  from ``--model``;
* ``run_s`` = ``text_s`` + ``image_s``, all under ``torch.inference_mode()``:
  - ``text_s``: the label prompts ``--template.format(label)``, encoded ONCE:
    ``processor(text=...)`` (CLIP: padded to the longest prompt, with attention_mask; SigLIP:
    padded to max_length = the tokenizer's model_max_length, 64, input_ids only, as the Hub
    processors and transformers' zero-shot pipeline do), ``model.get_text_features`` in chunks of
    ``--text-batch-size`` prompts, L2-normalized;
  - ``image_s``: for each batch of ``--batch-size`` images, opening them with PIL,
    ``processor(images=batch)``, ``model.get_image_features``, L2 normalization,
    ``logits = logit_scale.exp() * image @ text.T`` (``+ logit_bias`` for SigLIP), softmax over
    the labels (CLIP) or elementwise sigmoid (SigLIP), top-k.
  ``images_per_s`` = images / run_s (text encoding included, as it is in glance's run).

Images: the files under ``--images`` (searched recursively, like glance) whose extension is an
image one, in sorted order (the same list as transformers_caption.py). The image processor is the
PIL one (``backend="pil"`` in transformers 5, ``use_fast=False`` before) unless ``--use-fast``;
the class actually used is reported. Labels: the lines of ``--labels-file``, stripped, without
blank lines and ``#`` comment lines (as glance's --labels-file).

Writes one JSON line per image to ``--output`` (``{"file", "label", "score", "predictions":
[{"label", "score"}, ... top-k]}``, ``label``/``score`` being the top one, as glance's classify
records) and prints one JSON line of
timings on stdout (progress and warnings go to stderr). How to run, from the repository root:

    venv/bin/python benches/transformers_classify.py --model bench-models/clip-b32 \\
        --images ../shared/images --labels-file benches/labels-1000.txt \\
        [--template "a photo of a {}."] [--top-k 5] [--batch-size 32] [--threads 2] \\
        [--output labels.jsonl]
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402

from bench_common import list_images, peak_gpu_mb, sync  # noqa: E402

IMPORT_S = time.perf_counter() - _T0


def pooled(out) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4 and a model output (pooler_output) in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local CLIP / SigLIP directory in Hugging Face layout")
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--labels-file", required=True, type=Path, help="one label per line")
    ap.add_argument("--template", default="a photo of a {}.")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    ap.add_argument("--text-batch-size", type=int, default=256, help="prompts per text forward pass (default 256)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N")
    ap.add_argument("--use-fast", action="store_true", help="fast (torchvision) image processor instead of PIL")
    ap.add_argument("--output", "--out", dest="output", type=Path, help="write {file, label, score, predictions} JSON lines here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    paths = list_images(args.images)
    if not paths:
        ap.error(f"no images in {args.images}")
    labels = [x.strip() for x in args.labels_file.read_text(encoding="utf-8").splitlines()]
    labels = [x for x in labels if x and not x.startswith("#")]
    if not labels:
        ap.error(f"no labels in {args.labels_file}")
    top_k = min(args.top_k, len(labels))
    prompts = [args.template.format(x) for x in labels]

    t = time.perf_counter()
    if int(transformers.__version__.split(".")[0]) >= 5:  # use_fast is deprecated in favour of backend
        proc_kw = {"backend": "torchvision" if args.use_fast else "pil"}
    else:
        proc_kw = {"use_fast": args.use_fast}
    processor = AutoProcessor.from_pretrained(args.model, **proc_kw)
    model = AutoModel.from_pretrained(args.model, dtype=dtype).eval().to(device)
    sync(device)
    load_s = time.perf_counter() - t
    model_type = model.config.model_type
    if model_type not in ("clip", "siglip"):
        ap.error(f"{args.model}: model_type {model_type!r}, expected clip or siglip")
    siglip = model_type == "siglip"
    if siglip:  # the Hub SigLIP processors / zero-shot pipeline: pad to max_length (64)
        text_kw = dict(padding="max_length", max_length=processor.tokenizer.model_max_length, truncation=True)
    else:
        text_kw = dict(padding=True, truncation=True)

    records: list[dict] = []
    token_lengths: list[int] = []
    t = time.perf_counter()
    with torch.inference_mode():
        chunks = []
        for start in range(0, len(prompts), args.text_batch_size):
            text_inputs = processor(text=prompts[start : start + args.text_batch_size], return_tensors="pt", **text_kw).to(device)
            token_lengths.append(int(text_inputs["input_ids"].shape[1]))
            chunks.append(l2n(pooled(model.get_text_features(**text_inputs)).float()))
        text_embeds = torch.cat(chunks)  # [L, D]
        sync(device)
        text_s = time.perf_counter() - t
        scale = model.logit_scale.float().exp()
        bias = model.logit_bias.float() if siglip else None
        print(f"{len(labels)} labels encoded, {text_s:.1f} s", file=sys.stderr, flush=True)
        for start in range(0, len(paths), args.batch_size):
            batch_paths = paths[start : start + args.batch_size]
            batch = [Image.open(p) for p in batch_paths]
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype)
            if start == 0:
                first_pixels = pixel_values
            image_embeds = l2n(pooled(model.get_image_features(pixel_values=pixel_values)).float())
            logits = scale * image_embeds @ text_embeds.t()
            if siglip:
                probs = torch.sigmoid(logits + bias)
            else:
                probs = logits.softmax(dim=-1)
            scores, idx = probs.topk(top_k, dim=-1)
            for p, s_row, i_row in zip(batch_paths, scores.tolist(), idx.tolist()):
                top = [{"label": labels[i], "score": s} for s, i in zip(s_row, i_row)]
                records.append({"file": str(p), "label": top[0]["label"], "score": top[0]["score"], "predictions": top})
            for im in batch:
                im.close()
            print(f"{len(records)}/{len(paths)} images, {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    run_s = time.perf_counter() - t

    # The image tower alone on the first batch, after the timed run (not part of run_s).
    with torch.inference_mode():
        t = time.perf_counter()
        model.get_image_features(pixel_values=first_pixels)
        sync(device)
        vision_s_per_image = (time.perf_counter() - t) / first_pixels.shape[0]

    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

    print(json.dumps({
        "impl": "transformers",
        "task": "zero-shot",
        "model": args.model,
        "model_type": model_type,
        "images": len(paths),
        "labels": len(labels),
        "template": args.template,
        "top_k": top_k,
        "batch_size": args.batch_size,
        "text_batch_size": args.text_batch_size,
        "text_tokens": max(token_lengths),
        "dtype": args.dtype,
        "device": str(device),
        "import_s": round(IMPORT_S, 3),
        "load_s": round(load_s, 3),
        "text_s": round(text_s, 3),
        "image_s": round(run_s - text_s, 3),
        "run_s": round(run_s, 3),
        "images_per_s": round(len(paths) / run_s, 4),
        "vision_s_per_image": round(vision_s_per_image, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": peak_gpu_mb(device),
        "torch_threads": torch.get_num_threads(),
        "image_processor": type(processor.image_processor).__name__,
        "image_processor_args": proc_kw,
        "tokenizer": type(processor.tokenizer).__name__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
