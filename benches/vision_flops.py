#!/usr/bin/env python3
"""GFLOP per image of a checkpoint's vision tower (ViT-style: BLIP, CLIP, SigLIP, ViT encoders of
vision encoder-decoders), counted from its config.json: 2 FLOP per multiply-add of the patch
embedding, every transformer layer's q/k/v/output projections and MLP, and the attention
products (QK^T and AV). Norms, softmax and activations are left out (a few percent).

    python benches/vision_flops.py MODEL_DIR   ->  prints e.g. "110.4"
"""

import json
import sys
from pathlib import Path


def vision_config(cfg):
    if "vision_config" in cfg:
        return cfg["vision_config"], cfg.get("model_type")
    if "encoder" in cfg:
        return cfg["encoder"], cfg["encoder"].get("model_type")
    return cfg, cfg.get("model_type")


def gflop(model_dir):
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    v, family = vision_config(cfg)
    d, inter, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    size, patch = v["image_size"], v["patch_size"]
    patches = (size // patch) ** 2
    cls = 0 if family == "siglip" else 1  # SigLIP has no class token
    t = patches + cls
    per_layer = 2 * t * (4 * d * d + 2 * d * inter) + 2 * 2 * t * t * d
    embed = 2 * patches * (3 * patch * patch) * d
    return (layers * per_layer + embed) / 1e9


if __name__ == "__main__":
    print(f"{gflop(sys.argv[1]):.1f}")
