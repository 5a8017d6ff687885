"""Training data: random crops from a folder of images, held in memory as uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import SiccError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class CropSampler:
    """Draws batches of random `patch`x`patch` RGB crops with random horizontal flips.

    Images smaller than the patch are upscaled so their short side equals it.
    """

    def __init__(self, root: Path, patch: int, seed: int = 0, limit: int | None = None):
        paths = list_images(root)[:limit]
        if not paths:
            raise SiccError(f"{root}: no training images found")
        self.images: list[np.ndarray] = []
        for p in paths:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if min(im.size) < patch:
                    s = patch / min(im.size)
                    im = im.resize((max(patch, round(im.width * s)), max(patch, round(im.height * s))), Image.BICUBIC)
                self.images.append(np.asarray(im))
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> torch.Tensor:
        out = np.empty((size, self.patch, self.patch, 3), dtype=np.uint8)
        for i in range(size):
            img = self.images[self.rng.integers(len(self.images))]
            top = self.rng.integers(img.shape[0] - self.patch + 1)
            left = self.rng.integers(img.shape[1] - self.patch + 1)
            crop = img[top : top + self.patch, left : left + self.patch]
            out[i] = crop[:, ::-1] if self.rng.random() < 0.5 else crop
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
