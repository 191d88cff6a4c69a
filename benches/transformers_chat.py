#!/usr/bin/env python3
"""Time Hugging Face transformers captioning images with a chat vision-language model (Qwen3-VL),
end to end, with prefill and decoding timed apart (the Python side of benches/bench.sh's chat
cases; glance is the other side).

Timed separately:
* ``import_s``: importing torch and transformers;
* ``load_s``: loading the tokenizer (``AutoTokenizer``) and the model
  (``AutoModelForImageTextToText``: ``Qwen3VLForConditionalGeneration``) from ``--model``, and
  building the image processor;
* ``run_s``: for each batch, opening the images with PIL (``convert("RGB")``), transformers'
  ``Qwen2VLImageProcessorPil`` (the PIL backend of the checkpoint's ``Qwen2VLImageProcessorFast``,
  which needs torchvision), built from the model's ``preprocessor_config.json`` with the pixel
  budget ``--max-pixels`` (``size.longest_edge``; ``size.shortest_edge`` = ``--min-pixels``,
  default the config's, capped at ``--max-pixels`` as glance caps it), the chat template rendered
  by ``tokenizer.apply_chat_template`` for one user message ``[{"type": "image"}, {"type": "text",
  "text": PROMPT}]`` with add_generation_prompt, each ``<|image_pad|>`` expanded to
  ``grid.prod() // merge_size**2`` copies and the prompts tokenized left-padded (what
  ``Qwen3VLProcessor`` does, which needs torchvision for its video processor), ``model.generate``
  (greedy, exactly ``--max-new-tokens`` new tokens: min_new_tokens = max_new_tokens,
  do_sample=False; ``mm_token_type_ids`` 1 at the image tokens, as the processor returns them, for
  the M-RoPE positions) and ``tokenizer.batch_decode`` of the new tokens (skip_special_tokens),
  all under ``torch.inference_mode()``. ``images_per_s`` = images / run_s.
* ``prefill_s`` / ``decode_s``: inside every ``generate`` of the timed run, a streamer
  (``generate``'s ``streamer``, which receives the prompt, then each step's new tokens on the
  CPU) takes the time of the first new token: prefill = from calling ``generate`` (the vision tower,
  M-RoPE positions and the whole prompt's forward pass included) to the first token; decode = the
  rest of ``generate``. ``prefill_tokens``: the prompts' tokens without padding, image tokens
  included; ``decode_tokens``: the new tokens after each row's first. Summed over the batches, so
  ``prefill_tokens_per_s`` and ``decode_tokens_per_s`` compare with glance's GLANCE_TIMINGS lines
  (``glance timings: batch B prefill Xs (N tokens) decode Ys (M tokens)``), counted the same way.

Images: ``--images`` takes image files and/or folders (searched recursively, like glance, in
sorted order), in the order given.

Prints one JSON line on stdout (progress and warnings go to stderr). How to run, from the
repository root:

    venv/bin/python benches/transformers_chat.py --model bench-models/qwen3-vl-2b \\
        --images ../shared/images/chelsea.png ../shared/images/page.png --batch-size 2 \\
        --max-new-tokens 64 [--max-pixels 262144] [--prompt "Describe this image in one sentence."] \\
        [--threads 2] [--dtype float32] [--device cpu] [--out captions.jsonl]
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
from transformers import AutoModelForImageTextToText, AutoTokenizer  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

from bench_common import list_images, peak_gpu_mb, sync  # noqa: E402

IMPORT_S = time.perf_counter() - _T0
DEFAULT_PROMPT = "Describe this image in one sentence."
IMAGE_PAD = "<|image_pad|>"


class FirstTokenTimer(BaseStreamer):
    """Notes when ``generate`` hands over its first new tokens (its first ``put`` is the prompt).
    The tokens arrive on the CPU, so on a GPU the time includes the wait for them."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def inputs_list(items: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their images (recursively, sorted), in order."""
    out: list[Path] = []
    for p in items:
        out += list_images(p) if p.is_dir() else [p]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local model directory in Hugging Face layout")
    ap.add_argument("--images", required=True, type=Path, nargs="+", help="image files and/or folders")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="exactly this many new tokens per image")
    ap.add_argument("--max-pixels", type=int, default=262144, help="pixel budget per image (size.longest_edge)")
    ap.add_argument("--min-pixels", type=int, default=None,
                    help="size.shortest_edge (default: preprocessor_config.json's, at most --max-pixels)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the instruction (default {DEFAULT_PROMPT!r})")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N")
    ap.add_argument("--out", type=Path, help="write {path, caption} JSON lines here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    paths = inputs_list(args.images)
    if not paths:
        ap.error(f"no images in {args.images}")
    n_new = args.max_new_tokens

    t = time.perf_counter()
    model_dir = Path(args.model)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
    pre = {k: v for k, v in pre.items() if k not in ("image_processor_type", "processor_class")}
    min_pixels = min(args.min_pixels if args.min_pixels is not None else pre["size"]["shortest_edge"], args.max_pixels)
    pre["size"] = {"shortest_edge": min_pixels, "longest_edge": args.max_pixels}
    image_processor = Qwen2VLImageProcessorPil(**pre)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).eval().to(device)
    sync(device)
    load_s = time.perf_counter() - t
    image_token_id = model.config.image_token_id
    assert tokenizer.convert_tokens_to_ids(IMAGE_PAD) == image_token_id
    merge = image_processor.merge_size ** 2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.prompt}]}]
    template = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert template.count(IMAGE_PAD) == 1, template

    gen = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, num_beams=1)
    captions: list[str] = []
    image_tokens: list[int] = []
    prefill_s = decode_s = 0.0
    prefill_tokens = decode_tokens = 0
    t = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), args.batch_size):
            batch = []
            for p in paths[start : start + args.batch_size]:
                with Image.open(p) as im:
                    batch.append(im.convert("RGB"))
            feats = image_processor(images=batch, return_tensors="pt")
            grid = feats["image_grid_thw"]
            counts = [int(g.prod()) // merge for g in grid]
            image_tokens += counts
            # Qwen3VLProcessor's expansion: one <|image_pad|> per merged patch.
            texts = [template.replace(IMAGE_PAD, IMAGE_PAD * n) for n in counts]
            enc = tokenizer(texts, padding=True, return_tensors="pt")
            input_ids = enc["input_ids"].to(device)
            attention_mask = enc["attention_mask"].to(device)
            timer = FirstTokenTimer()
            began = time.perf_counter()
            ids = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                mm_token_type_ids=(input_ids == image_token_id).int(),
                pixel_values=feats["pixel_values"].to(device=device, dtype=dtype),
                image_grid_thw=grid.to(device),
                streamer=timer,
                **gen,
            )
            sync(device)
            ended = time.perf_counter()
            if ids.shape[1] - input_ids.shape[1] != n_new:
                raise SystemExit(f"generate made {ids.shape[1] - input_ids.shape[1]} new tokens, not {n_new}")
            first = timer.first_token_at if timer.first_token_at is not None else ended
            prefill_s += first - began
            decode_s += ended - first
            prefill_tokens += int(attention_mask.sum())
            decode_tokens += len(batch) * (n_new - 1)
            captions += tokenizer.batch_decode(ids[:, input_ids.shape[1]:].cpu(), skip_special_tokens=True)
            print(f"{len(captions)}/{len(paths)} images, {time.perf_counter() - t:.1f} s "
                  f"(prefill {first - began:.2f} s, decode {ended - first:.2f} s)", file=sys.stderr, flush=True)
    run_s = time.perf_counter() - t

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
        "new_tokens": n_new,
        "max_pixels": args.max_pixels,
        "min_pixels": min_pixels,
        "prompt": args.prompt,
        "dtype": args.dtype,
        "device": str(device),
        "import_s": round(IMPORT_S, 3),
        "load_s": round(load_s, 3),
        "run_s": round(run_s, 3),
        "images_per_s": round(len(paths) / run_s, 4),
        "prefill_tokens": prefill_tokens,
        "prefill_s": round(prefill_s, 3),
        "prefill_tokens_per_s": round(prefill_tokens / prefill_s, 2) if prefill_s > 0 else None,
        "decode_tokens": decode_tokens,
        "decode_s": round(decode_s, 3),
        "decode_tokens_per_s": round(decode_tokens / decode_s, 3) if decode_s > 0 else None,
        "image_tokens_per_image": image_tokens,
        "image_tokens_mean": round(sum(image_tokens) / len(image_tokens), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": peak_gpu_mb(device),
        "torch_threads": torch.get_num_threads(),
        "image_processor": type(image_processor).__name__,
        "tokenizer": type(tokenizer).__name__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
