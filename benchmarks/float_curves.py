"""Quick screening of codec weights between full evaluations: every layer's rate and PSNR through the
float network (estimated rates under rounding, which the real decode matches), on six Kodak images,
with the bits per latent element that each layer adds, the slope of the curve at each inner layer as a
lambda (`evaluate.rd_slopes`: what `train.plane_level_lambdas` follows) and the BD-rate of every file
against the first.
Slice-layered and plane-layered weights alike (a plane-layered layer k is the plain decoder's: each
value's table mean inside the interval that k plane layers leave, `PlaneFills.residual`).

    python benchmarks/float_curves.py weights/sicc-base.safetensors runs/X/weights.safetensors

About a minute per file on one free core. Screening only: `sicc eval` gives the published numbers.
"""

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from codec.api import _padded_tensor
from codec.data import CropSampler
from codec.entropy import VALUE_LIMIT
from codec.evaluate import bd_rate, rd_slopes
from codec.model import ProgressiveCodec, bits
from codec.plane_fills import PlaneFills
from codec.train import psnr
from codec.weights import load_codec, load_float_model

IMAGES = ["kodim01", "kodim05", "kodim07", "kodim13", "kodim19", "kodim23"]


def kodak_image(name: str) -> torch.Tensor:
    """A Kodak image as [1, 3, H, W] in [0, 1]."""
    rgb = np.array(Image.open(f"../shared/data/kodak/{name}.png").convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def encoder_input(x: torch.Tensor) -> torch.Tensor:
    """An image from kodak_image padded as the encoder pads it (to the network's grid)."""
    return _padded_tensor(_rgb(x))


@dataclass
class PlaneLatents:
    """What a plane-layered encoder codes for an image: y's symbols around z's means, with their tables."""
    hyper: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    symbols: torch.Tensor
    tables: torch.Tensor
    z_bits: float


def plane_latents(model: ProgressiveCodec, fills: PlaneFills, x: torch.Tensor) -> PlaneLatents:
    """`x` padded as the encoder pads it (`encoder_input`)."""
    with torch.no_grad():
        y = model.g_a(x)
        hyper = model.decoded_hyper(y)
        mean, scale = model.slice_params(0, hyper, [])
        scale = model.scale_bound(scale)
        symbols = torch.round(y - mean).clamp(-VALUE_LIMIT, VALUE_LIMIT).long()
        z_bits = bits(model.entropy_bottleneck(model.h_a(y))[1]).item()
    return PlaneLatents(hyper, mean, scale, symbols, fills.table_index(scale), z_bits)


def plane_decode(model: ProgressiveCodec, fills: PlaneFills, lat: PlaneLatents, level: int) -> torch.Tensor:
    """The plain decoder's image after `level` plane layers (padded; not clamped)."""
    return model.g_s(lat.mean + fills.residual(lat.symbols, lat.tables, level).float())


def plane_bits(fills: PlaneFills, lat: PlaneLatents, level: int) -> float:
    """Estimated bits of a file of `level` plane layers (z included)."""
    return lat.z_bits + float(fills.bits(lat.symbols.double(), lat.scale.double(), lat.tables, level, noisy=False))


def level_curve(path: str, images: list[torch.Tensor]) -> tuple[list[tuple[float, float]], list[float]]:
    """Mean (bpp, PSNR) per layer count, and the mean bits per latent element that each layer after
    the first adds (slice-layered: per element of its slice)."""
    model = load_float_model(path).eval()
    if model.cfg.layering == "planes":
        return _plane_level_curve(model, load_codec(path).plane_fills(), images)
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


def _plane_level_curve(model: ProgressiveCodec, fills: PlaneFills, images: list[torch.Tensor]):
    samples = [(x, plane_latents(model, fills, encoder_input(x))) for x in images]
    points = plane_points(fills, samples, lambda lat, level: plane_decode(model, fills, lat, level))
    elements = model.cfg.M / 256  # latent elements per pixel
    added = [(b - a) / elements for a, b in zip(points[:-1, 0], points[1:, 0])]
    return [tuple(p) for p in points], added


def plane_points(fills: PlaneFills, samples: list[tuple[torch.Tensor, PlaneLatents]], decode: Callable) -> np.ndarray:
    """Mean (bpp, PSNR) after each number of plane layers over `samples` (image, its latents), each
    reconstructed by `decode(latents, level)` (plane_decode or a probe's decoder)."""
    points = np.zeros((fills.levels + 1, 2))
    with torch.no_grad():
        for x, lat in samples:
            h, w = x.shape[2:]
            for level in range(fills.levels + 1):
                rec = decode(lat, level)[..., :h, :w].clamp(0, 1)
                points[level] += (plane_bits(fills, lat, level) / (h * w), psnr(((rec - x) ** 2).mean().item()))
    return points / len(samples)


def train_for_minutes(minutes: float, batch: int, patch: int, seed: int, loss_of: Callable, opt,
                      evaluate: Callable[[], str], every: int, after_report: Callable[[], None] = lambda: None):
    """The probes' loop: Adam steps on random training crops until the time is up, printing
    `evaluate()` every `every` steps and at the end (then `after_report()`, e.g. a save)."""
    sampler = CropSampler("../shared/data/train", patch, seed=seed)
    t0, step = time.time(), 0
    while time.time() - t0 < minutes * 60:
        loss = loss_of(sampler.batch(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % every == 0:
            print(step, f"{time.time() - t0:.0f} s", evaluate(), flush=True)
            after_report()
    print("end", step, evaluate(), flush=True)
    after_report()


def _rgb(x: torch.Tensor) -> np.ndarray:
    """The 8-bit pixels an image in [0, 1] was read from (exact for kodak_image's), for the encoder's padding."""
    return (x[0].permute(1, 2, 0) * 255).round().byte().numpy()


def main(paths: list[str]):
    torch.set_num_threads(1)
    images = [kodak_image(n) for n in IMAGES]
    first = None
    for path in paths:
        curve, per_layer = level_curve(path, images)
        print(path)
        print("  layers 1..: " + " ".join(f"{b:.3f}/{q:.2f}" for b, q in curve))
        print("  bits per latent element each layer adds: " + " ".join(f"{b:.2f}" for b in per_layer))
        print("  lambda (the curve's slope) at layers 2..%d: " % (len(curve) - 1)
              + " ".join(f"{s:.2g}" for s in rd_slopes(curve)))
        if first is None:
            first = curve
        else:
            print(f"  BD-rate (PSNR) vs {paths[0]}: {bd_rate(first, curve):+.2f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
