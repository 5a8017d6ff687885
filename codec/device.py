"""The torch device a command runs on: --device auto|cpu|cuda for decoding and training alike."""

from __future__ import annotations

import torch

from .errors import SiccError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SiccError("--device cuda: no CUDA device available")
    return torch.device(device)
