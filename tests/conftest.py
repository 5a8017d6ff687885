"""Shared fixtures: a tiny model (fast, untrained but with spread-out latents) and small images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codec.model import TINY_CONFIG, ProgressiveCodec
from codec.weights import export_weights

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def make_tiny_model(seed: int = 0) -> ProgressiveCodec:
    torch.manual_seed(seed)
    model = ProgressiveCodec(TINY_CONFIG)
    with torch.no_grad():
        # An untrained g_a gives latents near 0 (all symbols equal); scale it so codes carry information.
        model.g_a[-1].weight.mul_(40.0)
    return model


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    export_weights(make_tiny_model(), path)
    return path


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "other.safetensors"
    export_weights(make_tiny_model(seed=1), path)
    return path


def photo(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    """A small photo-like RGB test image: smooth gradients plus texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 7 + yy / 11)], axis=2) * 200
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(base + noise + 20, 0, 255).astype(np.uint8), "RGB")


def photo_dir(path: Path, count: int, width: int, height: int) -> Path:
    """A directory of `count` different photo()s, a dataset for training and evaluation commands."""
    path.mkdir()
    for i in range(count):
        photo(width, height, seed=i).save(path / f"{i}.png")
    return path


def kodak_crop(name: str = "kodim23.png", box=(256, 128, 512, 384)) -> Image.Image:
    path = KODAK / name
    if not path.exists():
        pytest.skip("../shared/data/kodak is not available")
    with Image.open(path) as im:
        return im.convert("RGB").crop(box)


def psnr(a: Image.Image, b: Image.Image) -> float:
    from codec.evaluate import psnr as psnr_arrays

    return psnr_arrays(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
