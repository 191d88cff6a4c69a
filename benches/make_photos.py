#!/usr/bin/env python3
"""Write a folder of phone-camera-sized JPEGs for the benchmark's large-photo runs.

The shared photos are small (0.1-0.3 megapixels), so decoding and resizing cost little next to
the models; a phone photo is 12 megapixels and a 3 MB JPEG, where decoding and shrinking to the
model's 224 or 384 can take longer than the model itself. This upsamples five of the shared
photos to 4032x3024 (bicubic), adds Gaussian noise (sigma 6, fixed seed) so that the JPEG data
has a real photo's entropy (about 3 MB at quality 92), and writes each COPIES times:

    venv/bin/python benches/make_photos.py --out bench-photos            # 5 x 8 = 40 files
    IMAGES=bench-photos CASES="clip-b32-100 blip-base-greedy" benches/bench.sh
"""

import argparse
import os
import shutil

import numpy as np
from PIL import Image

SOURCES = ["chelsea.png", "rocket.jpg", "coffee.png", "astronaut.png", "motorcycle_left.png"]


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-photos")
    parser.add_argument("--images", default=os.path.join(here, "..", "..", "shared", "images"))
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--size", default="4032x3024")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(SOURCES):
        image = Image.open(os.path.join(args.images, name)).convert("RGB")
        image = image.resize((width, height), Image.BICUBIC)
        noisy = np.asarray(image).astype(np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
        first = os.path.join(args.out, f"photo{i}_0.jpg")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(first, quality=92)
        for c in range(1, args.copies):
            shutil.copyfile(first, os.path.join(args.out, f"photo{i}_{c}.jpg"))
    print(f"{len(SOURCES) * args.copies} JPEGs of {width}x{height} in {args.out}")


if __name__ == "__main__":
    main()
