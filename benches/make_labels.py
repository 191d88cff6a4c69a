#!/usr/bin/env python3
"""Write benches/labels-1000.txt: 1000 distinct zero-shot labels for the classification cases of
benches/bench.sh (the 100-label cases use its first 100 lines).

The labels are "<adjective> <noun>" pairs: every one of the 25 x 40 = 1000 combinations of the two
word lists below, in a fixed pseudo-random order (random.Random(SEED).shuffle), so that the first
100 lines mix all the words. A few nouns are two words ("fire truck"), so the labels are two or
three words long, like ImageNet class names; only the standard library is used and the output is
the same on every machine and Python 3 version.

Speed does not depend on what the labels say, only on how many there are and how many tokens the
prompts have: "a photo of a {label}." is 7 or 8 words (+ punctuation), and make_models.py builds
tokenizers in which every word here is a single token, as in the real CLIP / SigLIP vocabularies.

How to run (from the repository root; the output is committed):

    python3 benches/make_labels.py            # writes benches/labels-1000.txt
    python3 benches/make_labels.py --check    # exits 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

SEED = 0
ADJECTIVES = [
    "red", "blue", "green", "yellow", "black", "white", "brown", "orange", "purple", "gray",
    "small", "large", "old", "new", "wooden", "metal", "plastic", "glass", "striped", "spotted",
    "wet", "dusty", "shiny", "broken", "tiny",
]
NOUNS = [
    "cat", "dog", "horse", "bird", "fish", "rabbit", "turtle", "frog", "snake", "owl",
    "car", "bicycle", "motorcycle", "bus", "train", "boat", "airplane", "rocket", "tractor", "fire truck",
    "chair", "table", "lamp", "clock", "camera", "telephone", "guitar", "piano", "umbrella", "backpack",
    "cup", "bottle", "teapot", "coffee mug", "apple", "banana", "flower", "tree", "house", "bridge",
]
N_LABELS = len(ADJECTIVES) * len(NOUNS)


def labels() -> list[str]:
    assert len(set(ADJECTIVES)) == len(ADJECTIVES) and len(set(NOUNS)) == len(NOUNS)
    out = [f"{a} {n}" for a in ADJECTIVES for n in NOUNS]
    random.Random(SEED).shuffle(out)
    assert len(out) == len(set(out)) == N_LABELS == 1000
    return out


def words() -> list[str]:
    """Every word the labels use (for the tokenizers of make_models.py)."""
    return sorted({w for x in ADJECTIVES + NOUNS for w in x.split()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "labels-1000.txt")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()
    text = "".join(x + "\n" for x in labels())
    if args.check:
        ok = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if ok else 'DIFFERS (re-run without --check)'}")
        return 0 if ok else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {N_LABELS} labels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
