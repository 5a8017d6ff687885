"""Quick screening of codec weights between full evaluations: every layer's rate and PSNR through the
float network (estimated rates under rounding, which the real decode matches), on six Kodak images,
with each slice's bits per latent element and the BD-rate of every file against the first.

    python benchmarks/float_curves.py weights/sicc-base.safetensors runs/X/weights.safetensors

About a minute per file on one free core. Screening only: `sicc eval` gives the published numbers.
"""

import sys

import numpy as np
import torch
from PIL import Image

from codec.api import _padded_tensor
from codec.evaluate import bd_rate
from codec.model import bits
from codec.train import psnr
from codec.weights import load_float_model

IMAGES = ["kodim01", "kodim05", "kodim07", "kodim13", "kodim19", "kodim23"]


def kodak_image(name: str, padded: bool = False) -> torch.Tensor:
    """A Kodak image as [1, 3, H, W] in [0, 1]; `padded`: as the encoder pads it (to the network's grid)."""
    rgb = np.array(Image.open(f"../shared/data/kodak/{name}.png").convert("RGB"))
    if padded:
        return _padded_tensor(rgb)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def level_curve(path: str, images: list[torch.Tensor]) -> tuple[list[tuple[float, float]], list[float]]:
    """Mean (bpp, PSNR) per layer count, and mean bits per element of each slice."""
    model = load_float_model(path).eval()
    slices = model.cfg.slices
    points = np.zeros((len(slices) + 1, 2))
    slice_bits = np.zeros(len(slices))
    with torch.no_grad():
        for x in images:
            pixels = x.shape[2] * x.shape[3]
            for level in range(len(slices) + 1):
                out = model(x, level)
                rec = out["x_full"] if level == len(slices) else out["x_level"]
                mse = ((rec.clamp(0, 1) - x) ** 2).mean().item()
                y_bits = [bits(l).item() for l in out["likelihoods"]["y"]]
                points[level] += ((bits(out["likelihoods"]["z"]).item() + sum(y_bits[:level])) / pixels, psnr(mse))
            elements = pixels / 256  # y is at 1/16 of the resolution in both directions
            slice_bits += np.array(y_bits) / (elements * np.array(slices))
    points /= len(images)
    return [tuple(p) for p in points], list(slice_bits / len(images))


def main(paths: list[str]):
    torch.set_num_threads(1)
    images = [kodak_image(n) for n in IMAGES]
    first = None
    for path in paths:
        curve, per_slice = level_curve(path, images)
        print(path)
        print("  layers 1..: " + " ".join(f"{b:.3f}/{q:.2f}" for b, q in curve))
        print("  bits per element of each slice: " + " ".join(f"{b:.2f}" for b in per_slice))
        if first is None:
            first = curve
        else:
            print(f"  BD-rate (PSNR) vs {paths[0]}: {bd_rate(first, curve):+.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
