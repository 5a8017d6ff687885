"""Perceptual decoding by idempotent inversion (SPEC §5, seed 002).

Given the layers present, the plain decode x_mse is known. Sample from the diffusion prior under the
constraint that re-encoding the sample and decoding the same layers gives x_mse again (DPS guidance
with L = ||x_mse - reencode(x0)||_2, straight-through rounding). `strength` in [0, 1] is where the
sampler starts: 0 returns x_mse, 1 starts from pure noise, in between from x_mse noised to that
fraction of the schedule (fewer steps, closer to x_mse).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .diffusion import LinearSchedule, UNet, UNetConfig, sample
from .errors import SiccError

PRIOR_FORMAT = "sicc-prior-1"
DEFAULT_PRIOR = "sicc-prior.safetensors"
ZETA = 0.6  # DPS step size (paper)


def export_prior(model: UNet, path: Path) -> bytes:
    from .weights import write_weights_file

    tensors = {k: v.detach().cpu().half().contiguous() for k, v in model.state_dict().items()}
    return write_weights_file(tensors, {"format": PRIOR_FORMAT, "config": model.cfg.to_json()}, path)


def load_prior(path: Path) -> UNet:
    from .weights import read_weights_file

    arrays, meta, _ = read_weights_file(path, PRIOR_FORMAT)
    try:
        model = UNet(UNetConfig.from_json(meta["config"]))
        model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()})
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError):
        raise SiccError(f"{path}: prior weights do not fit the model they declare") from None
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=2)
def _cached_prior(path: str, mtime_ns: int) -> UNet:
    return load_prior(Path(path))


def prior_for(path: Path | None) -> UNet:
    from .weights import shipped_weights_dir

    p = Path(path) if path is not None else shipped_weights_dir() / DEFAULT_PRIOR
    if not p.exists():
        if path is None:
            raise SiccError("no diffusion prior is shipped yet; train one (sicc train prior) and pass --prior-weights")
        raise SiccError(f"prior weights not found: {p}")
    return _cached_prior(str(p.resolve()), p.stat().st_mtime_ns)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SiccError("--device cuda: no CUDA device available")
    return torch.device(device)


def invert(codec_model, x_mse: torch.Tensor, level: int, prior: UNet, strength: float = 1.0, steps: int = 50,
           seed: int = 0, zeta: float = ZETA, on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """x_mse [1, 3, H, W] in [0, 1] (H, W padded for the codec), `level` slices transmitted ->
    a perceptual reconstruction in [0, 1] on x_mse's device."""
    if not 0.0 <= strength <= 1.0:
        raise SiccError("--strength must be between 0 and 1")
    if strength == 0.0:
        return x_mse
    device = x_mse.device
    prior = prior.to(device)
    codec_model = codec_model.to(device).requires_grad_(False)
    target = x_mse.detach().clone()  # a normal tensor (decode ran under inference_mode)
    schedule = LinearSchedule()
    t_start = int(round(strength * (schedule.steps - 1)))
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(target.shape, generator=gen).to(device)
    x_start = schedule.add_noise(target * 2 - 1, torch.tensor([t_start], device=device), noise)

    def idempotence(x0: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(codec_model.reencode((x0 + 1) / 2, level) - target)

    out = sample(prior, schedule, x_start, t_start, steps, eta=1.0, guidance=idempotence, zeta=zeta,
                 generator=gen, on_step=on_step)
    return (out + 1) / 2
