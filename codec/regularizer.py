"""The information-theoretic regularizer (SPEC §4, seed 001): training-time only.

A conditional source entropy model q(x | x̂) built like the latent entropy model it is aligned with:
a discretised Gaussian per subpixel (bins of 1/255) whose mean and scale come from a small network,
channel-conditional (R from x̂; G from x̂ and R; B from x̂, R and G) as our slices are. Each training
step first fits q by maximum likelihood on a detached x̂, then the codec minimises
R + λD − α·H(X|X̂), with H estimated as E[−log2 q(x|x̂)] in bits per pixel.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LowerBound

BIN = 1.0 / 255.0
SCALE_MIN = 0.11 * BIN  # the latent model's scale bound, in pixel quantisation steps
LIKELIHOOD_MIN = 1e-9


class ConditionalSourceModel(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.nets = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3 + c, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(hidden, 2, 3, padding=1))
            for c in range(3)
        ])
        self.scale_bound = LowerBound(SCALE_MIN)

    def bits_per_pixel(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """E[-log2 q(x | x̂)], summed over the 3 channels, averaged over pixels and batch."""
        total = 0.0
        for c, net in enumerate(self.nets):
            out = net(torch.cat([x_hat, x[:, :c]], dim=1))
            mean = x_hat[:, c : c + 1] + out[:, :1] * BIN * 8
            scale = self.scale_bound(nn.functional.softplus(out[:, 1:]) * BIN * 8)
            v = x[:, c : c + 1] - mean
            p = torch.special.ndtr((v + BIN / 2) / scale) - torch.special.ndtr((v - BIN / 2) / scale)
            total = total - torch.log2(p.clamp_min(LIKELIHOOD_MIN)).mean()
        return total
