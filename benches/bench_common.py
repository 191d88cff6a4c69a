"""What benches/transformers_caption.py and benches/transformers_classify.py share: the image
listing glance uses, and timing on a GPU."""

from __future__ import annotations

from pathlib import Path

import torch

# The same list as glance's inputs::IMAGE_EXTENSIONS.
IMAGE_EXTENSIONS = {
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "tga", "pnm", "ppm", "pgm", "pbm",
    "qoi", "ico", "avif", "hdr", "exr", "jfif",
}


def list_images(folder: Path) -> list[Path]:
    """The image files under `folder`, recursively, in sorted order (as glance lists them)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix[1:].lower() in IMAGE_EXTENSIONS)


def sync(device: torch.device) -> None:
    """Waits for the GPU's queued work, so that a time taken next includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gpu_mb(device: torch.device) -> float | None:
    """Peak memory PyTorch allocated on a CUDA device, in MiB; None elsewhere."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
