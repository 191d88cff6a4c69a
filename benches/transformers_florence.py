#!/usr/bin/env python3
"""Time Hugging Face transformers running Florence-2 over a folder of images, end to end (the
Python side of benches/bench.sh's florence cases; glance is the other side).

Timed separately: ``import_s`` (torch, transformers), ``load_s`` (``AutoProcessor`` with the PIL
image processor, ``Florence2ForConditionalGeneration``), and ``run_s``: for each batch, opening
the images with PIL, ``processor(text=[TASK] * batch, images=batch)``, ``model.generate`` (the
checkpoint's generation config -- 3 beams, no-repeat 3-grams -- unless ``--num-beams``; exactly
``--new-tokens`` new tokens: min_new_tokens = max_new_tokens) and ``processor.batch_decode``
(with special tokens) plus ``post_process_generation`` at each image's size, all under
``torch.inference_mode()``. Prints one JSON line on stdout, as transformers_caption.py does.

    venv/bin/python benches/transformers_florence.py --model bench-models/florence2-base \\
        --images ../shared/images --task "<MORE_DETAILED_CAPTION>" --batch-size 8 --new-tokens 64
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
from transformers import AutoProcessor, Florence2ForConditionalGeneration  # noqa: E402

from bench_common import list_images, peak_gpu_mb, sync  # noqa: E402

IMPORT_S = time.perf_counter() - _T0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--task", default="<MORE_DETAILED_CAPTION>")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-beams", type=int, default=None, help="default: the checkpoint's (3)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    paths = list_images(args.images)
    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model, backend="pil")
    model = Florence2ForConditionalGeneration.from_pretrained(args.model, dtype=dtype).eval().to(device)
    sync(device)
    load_s = time.perf_counter() - t
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    if args.num_beams:
        gen["num_beams"] = args.num_beams
    results = []
    t = time.perf_counter()
    vision_s = 0.0
    with torch.inference_mode():
        for start in range(0, len(paths), args.batch_size):
            batch = [Image.open(p).convert("RGB") for p in paths[start : start + args.batch_size]]
            inputs = processor(text=[args.task] * len(batch), images=batch, return_tensors="pt").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            ids = model.generate(**inputs, **gen)
            texts = processor.batch_decode(ids.cpu(), skip_special_tokens=False)
            for im, text in zip(batch, texts):
                results.append(processor.post_process_generation(text, task=args.task, image_size=im.size))
                im.close()
            print(f"{len(results)}/{len(paths)} images, {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    run_s = time.perf_counter() - t
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for p, r in zip(paths, results):
                f.write(json.dumps({"path": str(p), "result": r}) + "\n")
    print(json.dumps({
        "impl": "transformers",
        "model": args.model,
        "model_class": type(model).__name__,
        "task": args.task,
        "images": len(paths),
        "batch_size": args.batch_size,
        "num_beams": gen.get("num_beams", model.generation_config.num_beams),
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        "device": str(device),
        "import_s": round(IMPORT_S, 3),
        "load_s": round(load_s, 3),
        "run_s": round(run_s, 3),
        "images_per_s": round(len(paths) / run_s, 4),
        "vision_s_per_image": round(vision_s, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": peak_gpu_mb(device),
        "torch_threads": torch.get_num_threads(),
        "image_processor": type(processor.image_processor).__name__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
