#!/usr/bin/env python3
"""Write real-size, random-weight BLIP captioning models for speed benchmarks.

Each model has the exact architecture and Hugging Face file layout of a Salesforce
checkpoint, but random weights (speed does not depend on the weights), so nothing is
downloaded from the Hub:

* ``blip-base/``  -- Salesforce/blip-image-captioning-base  (ViT-B/16 at 384, ~247M params, ~1 GB)
* ``blip-large/`` -- Salesforce/blip-image-captioning-large (ViT-L/16 at 384, ~470M params, ~1.9 GB)

Files, all written by ``save_pretrained``: ``config.json``, ``generation_config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``, ``processor_config.json``
and a stand-alone ``preprocessor_config.json`` like the Hub checkpoints have.

The tokenizer is a BERT WordPiece tokenizer with a synthetic vocabulary of exactly 30522
entries laid out like ``bert-base-uncased`` ([PAD]=0, [unused0..98]=1..99, [UNK]=100,
[CLS]=101, [SEP]=102, [MASK]=103, more [unusedN] up to 998, then words "w999", "w1000", ...)
plus BLIP's added bos token ``[DEC]`` = 30522, as in BLIP's own ``init_tokenizer``.
The image processor is BLIP's: 384x384, bicubic (resample 3), rescale 1/255, CLIP mean/std.

How to run (from the repository root; the output directory is not meant to be committed):

    venv/bin/python benches/make_models.py                        # bench-models/blip-base
    venv/bin/python benches/make_models.py --which blip-base,blip-large --out bench-models

Existing model directories are left alone unless ``--force`` is given. Fixed seed (``--seed``,
default 0): the same torch/transformers versions write the same weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BERT_VOCAB_SIZE = 30522  # bert-base-uncased, which BLIP's tokenizer extends with [DEC]

# The text decoder is the same BERT-base-sized decoder in both checkpoints; only the
# vision tower (and so the decoder's cross-attention input width) differs.
TEXT = dict(
    vocab_size=30524,  # as in Salesforce's config.json (the tokenizer has 30523 tokens)
    hidden_size=768,
    encoder_hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
    projection_dim=768,
    bos_token_id=30522,  # [DEC]
    sep_token_id=102,  # [SEP]: generation stops here
    pad_token_id=0,  # [PAD]
)
VISION_BASE = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=384,
    patch_size=16,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
    projection_dim=512,
)
MODELS = {
    "blip-base": (TEXT, VISION_BASE),
    "blip-large": (
        {**TEXT, "encoder_hidden_size": 1024},
        {**VISION_BASE, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
    ),
}


def vocab() -> list[str]:
    """30522 WordPiece entries at bert-base-uncased's special-token positions."""
    v = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    v += [f"[unused{i}]" for i in range(99, 994)]  # ids 104..998, as in BERT
    v += [f"w{i}" for i in range(len(v), BERT_VOCAB_SIZE)]
    assert len(v) == BERT_VOCAB_SIZE and v[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return v


def build_processor(workdir: Path) -> BlipProcessor:
    vocab_path = workdir / "vocab.txt"
    vocab_path.write_text("".join(w + "\n" for w in vocab()), encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_path), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's init_tokenizer
    image_processor = BlipImageProcessorPil(
        do_resize=True,
        size={"height": 384, "width": 384},
        resample=3,  # PIL.Image.BICUBIC
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make(name: str, out: Path, seed: int) -> None:
    text, vision = MODELS[name]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        processor = build_processor(Path(td))
        tok = processor.tokenizer
        assert len(tok) == BERT_VOCAB_SIZE + 1
        assert tok.convert_tokens_to_ids("[DEC]") == text["bos_token_id"]
        assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 100, 101, 102, 103)
        out.mkdir(parents=True, exist_ok=True)
        processor.save_pretrained(out)
        processor.image_processor.save_pretrained(out)  # the classic preprocessor_config.json
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=512, image_text_hidden_size=256)
    config.architectures = ["BlipForConditionalGeneration"]
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{name}: {n_params / 1e6:.1f}M parameters, {size / 1e6:.0f} MB in {out} "
          f"({time.perf_counter() - t0:.0f} s): {', '.join(sorted(p.name for p in out.iterdir()))}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-models"), help="parent directory (default bench-models)")
    ap.add_argument("--which", default="blip-base", help=f"comma-separated, from {','.join(MODELS)} (default blip-base)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite models that already exist")
    args = ap.parse_args()
    names = [n.strip() for n in args.which.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    for name in names:
        out = args.out / name
        if (out / "config.json").exists() and (out / "model.safetensors").exists() and not args.force:
            print(f"{name}: {out} exists, skipped (--force to rewrite)")
            continue
        make(name, out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
