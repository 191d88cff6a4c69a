#!/usr/bin/env python3
"""Time Hugging Face transformers captioning a folder of images, end to end (the Python side
of benches/bench.sh; glance is the other side).

Timed separately:
* ``import_s``: importing torch and transformers;
* ``load_s``: loading the image processor (``AutoImageProcessor``), the tokenizer
  (``AutoTokenizer``) and the model (``AutoModelForImageTextToText``: ``BlipForConditionalGeneration``
  for BLIP, ``VisionEncoderDecoderModel`` for e.g. ViT-GPT2) from ``--model``;
* ``run_s``: for each batch, opening the images with PIL, ``image_processor(images=batch)``,
  ``model.generate`` (greedy or beam search, exactly ``--new-tokens`` new tokens:
  min_new_tokens = max_new_tokens, do_sample=False) and ``tokenizer.batch_decode``
  (skip_special_tokens), all under ``torch.inference_mode()``. ``images_per_s`` = images / run_s.
  (For BLIP, ``image_processor(images=...)`` / ``tokenizer.batch_decode`` are exactly what
  ``BlipProcessor`` does for images-only inputs / ``batch_decode``.)

Images: the files under ``--images`` (searched recursively, like glance) whose extension is an
image one, in sorted order, opened with ``PIL.Image.open`` when the image processor converts to RGB
itself (``do_convert_rgb``, e.g. BLIP's; alpha is composited onto white), else (legacy configs
without it, e.g. nlpconnect/vit-gpt2-image-captioning's) with ``transformers.image_utils.load_image``
as the image-to-text pipeline and nlpconnect's model card do (EXIF transpose, ``convert("RGB")``:
alpha dropped); otherwise RGBA / grayscale images fail in normalize. The image processor is the
PIL one (``use_fast=False``, like glance's PIL-compatible preprocessing; ``backend="pil"`` in
transformers 5) unless ``--use-fast``
(torchvision backend; transformers falls back to PIL when torchvision is missing); the class
actually used is reported.

Prints one JSON line on stdout (progress and warnings go to stderr). How to run, from the
repository root:

    venv/bin/python benches/transformers_caption.py --model bench-models/blip-base \\
        --images ../shared/images --batch-size 8 --num-beams 1 --new-tokens 20 [--threads 2] \\
        [--dtype float32] [--device cpu] [--use-fast] [--out captions.jsonl]
    venv/bin/python benches/transformers_caption.py --model bench-models/vit-gpt2 ...
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
from transformers.image_utils import load_image  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer  # noqa: E402

from bench_common import list_images, peak_gpu_mb, sync  # noqa: E402

IMPORT_S = time.perf_counter() - _T0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local model directory in Hugging Face layout")
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-beams", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N")
    ap.add_argument("--use-fast", action="store_true", help="fast (torchvision) image processor instead of PIL")
    ap.add_argument("--out", type=Path, help="write {path, caption} JSON lines here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    paths = list_images(args.images)
    if not paths:
        ap.error(f"no images in {args.images}")

    t = time.perf_counter()
    if int(transformers.__version__.split(".")[0]) >= 5:  # use_fast is deprecated in favour of backend
        proc_kw = {"backend": "torchvision" if args.use_fast else "pil"}
    else:
        proc_kw = {"use_fast": args.use_fast}
    image_processor = AutoImageProcessor.from_pretrained(args.model, **proc_kw)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).eval().to(device)
    sync(device)
    load_s = time.perf_counter() - t
    if getattr(image_processor, "do_convert_rgb", None):
        open_image, image_loading = Image.open, "PIL.Image.open"
    else:
        open_image, image_loading = (lambda p: load_image(str(p))), "transformers.image_utils.load_image"

    gen = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        num_beams=args.num_beams,
        do_sample=False,
    )
    captions: list[str] = []
    t = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), args.batch_size):
            batch = [open_image(p) for p in paths[start : start + args.batch_size]]
            inputs = image_processor(images=batch, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(device=device, dtype=dtype)
            if start == 0:
                first_pixels = pixel_values
            ids = model.generate(pixel_values=pixel_values, **gen)
            captions += tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)
            for im in batch:
                im.close()
            print(f"{len(captions)}/{len(paths)} images, {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    run_s = time.perf_counter() - t

    # The vision tower alone on the first batch, after the timed run (not part of run_s).
    tower = getattr(model, "vision_model", None) or model.get_encoder()
    with torch.inference_mode():
        t = time.perf_counter()
        tower(pixel_values=first_pixels)
        sync(device)
        vision_s_per_image = (time.perf_counter() - t) / first_pixels.shape[0]

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for p, c in zip(paths, captions):
                f.write(json.dumps({"path": str(p), "caption": c}) + "\n")

    print(json.dumps({
        "impl": "transformers",
        "model": args.model,
        "model_class": type(model).__name__,
        "images": len(paths),
        "batch_size": args.batch_size,
        "num_beams": args.num_beams,
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        "device": str(device),
        "import_s": round(IMPORT_S, 3),
        "load_s": round(load_s, 3),
        "run_s": round(run_s, 3),
        "images_per_s": round(len(paths) / run_s, 4),
        "vision_s_per_image": round(vision_s_per_image, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": peak_gpu_mb(device),
        "torch_threads": torch.get_num_threads(),
        "image_processor": type(image_processor).__name__,
        "image_processor_args": proc_kw,
        "image_loading": image_loading,
        "tokenizer": type(tokenizer).__name__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
