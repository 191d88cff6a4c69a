#!/usr/bin/env python3
"""Reference CLIPScore / RefCLIPScore values for glance's tests (run by hand; never by CI).

What it computes
================
For the predictions in ``predictions.jsonl`` that have references in ``references.json`` (matched by
file name, as ``glance eval captions`` does) and whose image is in ``../shared/images``, with each
tiny random-weight judge model of ``tests/fixtures`` (``clip-tiny``, ``siglip-tiny``):

* CLIP-S = 2.5 * max(cos(image_embed, text_embed("A photo depicts " + caption)), 0)
* RefCLIP-S = harmonic mean of CLIP-S and max(max over references r of
  cos(text_embed(prefixed caption), text_embed("A photo depicts " + r)), 0)  (0 when both are 0)

as defined by Hessel et al. 2021 and their clipscore.py (``get_clip_score``,
``get_refonlyclipscore``: the same prefix on candidates and references, w = 2.5, and the paper's
max(., 0) on the reference side). Embeddings are transformers' ``get_image_features`` /
``get_text_features`` with each checkpoint's own processor (CLIP: ``padding=True``; SigLIP:
``padding="max_length"``, as its processor is used for zero-shot), images loaded with PIL and
converted to RGB. It writes ``expected_clipscore.json``: per judge, the mean scores, the count and
the per-image values, plus the files that could not be scored.

Run from the repository root:
    venv/bin/python eval/captions/make_clipscore.py
"""

import json
import os
import sys

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoModel, AutoProcessor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
IMAGES = os.path.join(ROOT, "..", "shared", "images")
PREFIX = "A photo depicts "
W = 2.5


def base_name(f):
    return f.replace("\\", "/").split("/")[-1]


def main():
    refs_doc = json.load(open(os.path.join(HERE, "references.json")))
    names = {i["id"]: base_name(i["file_name"]) for i in refs_doc["images"]}
    refs = {}
    for a in refs_doc["annotations"]:
        refs.setdefault(names[a["image_id"]], []).append(a["caption"])
    preds = {}
    for line in open(os.path.join(HERE, "predictions.jsonl")):
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("error") is None and isinstance(r.get("caption"), str):
            preds[base_name(r["file"])] = r["caption"]
    scored = sorted(n for n in preds if n in refs and os.path.exists(os.path.join(IMAGES, n)))
    unreadable = sorted(n for n in preds if n in refs and n not in scored)

    out = {
        "note": "written by make_clipscore.py; see its docstring",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "images": scored,
        "unreadable": unreadable,
        "judges": {},
    }
    for judge in ["clip-tiny", "siglip-tiny"]:
        path = os.path.join(ROOT, "tests", "fixtures", judge)
        model = AutoModel.from_pretrained(path).eval()
        processor = AutoProcessor.from_pretrained(path)
        padding = "max_length" if "siglip" in judge else True
        images = [Image.open(os.path.join(IMAGES, n)).convert("RGB") for n in scored]

        def texts(t):
            enc = processor(text=[PREFIX + x for x in t], padding=padding, truncation=True, return_tensors="pt")
            kw = {"input_ids": enc["input_ids"]}
            if "attention_mask" in enc:
                kw["attention_mask"] = enc["attention_mask"]
            with torch.no_grad():
                f = model.get_text_features(**kw)
            f = getattr(f, "pooler_output", f)
            return torch.nn.functional.normalize(f.double(), dim=-1).numpy()

        with torch.no_grad():
            pv = processor(images=images, return_tensors="pt")["pixel_values"]
            img = model.get_image_features(pixel_values=pv)
        img = getattr(img, "pooler_output", img)
        img = torch.nn.functional.normalize(img.double(), dim=-1).numpy()
        cand = texts([preds[n] for n in scored])
        cos = (img * cand).sum(-1)
        clip_s = W * np.clip(cos, 0, None)
        ref_s = []
        for i, n in enumerate(scored):
            r = texts(refs[n])
            best = max(float((cand[i] * r).sum(-1).max()), 0.0)
            c = float(clip_s[i])
            ref_s.append(0.0 if c + best == 0 else 2 * c * best / (c + best))
        out["judges"][judge] = {
            "clip_score": float(np.mean(clip_s)),
            "ref_clip_score": float(np.mean(ref_s)),
            "per_image": {
                n: {"cosine": float(cos[i]), "clip_score": float(clip_s[i]), "ref_clip_score": ref_s[i]}
                for i, n in enumerate(scored)
            },
        }
        print(judge, out["judges"][judge]["clip_score"], out["judges"][judge]["ref_clip_score"],
              "cosines", np.round(cos, 3).tolist(), file=sys.stderr)
    with open(os.path.join(HERE, "expected_clipscore.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
