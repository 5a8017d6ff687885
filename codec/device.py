"""The torch device a command runs on: --device auto|cpu|cuda for decoding and training alike."""

from __future__ import annotations

import torch

from .errors import SiccError


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SiccError("--device cuda: no CUDA device available")
    return torch.device(device)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 convolutions run natively on `device`. CPUs without AVX512-BF16 or AMX (AVX2-only
    ones, e.g. the AMD EPYC of session 8) emulate them, and there bf16 was far slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
