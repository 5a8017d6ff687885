"""The plane decoder as tensors, for encoder refinement: what a plain decoder of k layers of a
plane-layered file (planes.py, latent.py) puts in every latent value, and about how many bits those
k layers cost, for a whole latent at once and with gradients where the float model has them.

After k plane layers, a value whose table t has had plane m coded lies in an interval of width
3^(m-1) on the coder's grid (its table's range where no plane of it has been coded, itself where it
escaped and its first plane has been coded), and the plain decoder takes the table's mean inside it:
`PlaneState.expected()`, here from the same integer counts. The intervals of one width tile the
integers around 0 (balanced ternary), and the k layers' bits are -log2 of the interval's probability,
since the choices' probabilities are the table's counts inside the thirds.
"""

from __future__ import annotations

import numpy as np
import torch

from .exact import ONE
from .planes import Layer, PlaneModel

MASS_MIN = 1e-9  # as the float model's likelihood floor


def gaussian_interval_mass(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """P(low <= N(0, 1) <= high), computed in the tail the interval lies in: in the upper tail
    ndtr(high) - ndtr(low) is a difference of numbers near 1 and rounds to 0."""
    upper = low + high > 0
    return torch.where(upper, torch.special.ndtr(-low) - torch.special.ndtr(-high),
                       torch.special.ndtr(high) - torch.special.ndtr(low))


class PlaneFills:
    def __init__(self, model: PlaneModel, schedule: list[Layer], scale_bounds):
        def tensor(a):
            return torch.as_tensor(np.ascontiguousarray(a))

        self.lo, self.hi, self.planes, self.half = (tensor(a) for a in (model.lo, model.hi, model.planes, model.half))
        self.length = tensor(model.length)
        self.cum, self.cum_v = tensor(model.cum).double(), tensor(model.cum_v).double()
        self.scale_bounds = tensor(scale_bounds).double()  # fixed point, as LatentCodec's
        # width[k, t]: the interval width of table t's values after k plane layers
        T = len(model.planes)
        width = np.empty((len(schedule) + 1, T), np.int64)
        for k in range(len(schedule) + 1):
            for t in range(T):
                coded = [s.plane for layer in schedule[:k] for s in layer if s.t_min <= t <= s.t_max]
                width[k, t] = 3 ** (min(coded + [int(model.planes[t]) + 1]) - 1)
        self.width = tensor(width)

    @property
    def levels(self) -> int:
        """Plane layers of a full file (a level is how many of them a decoder has: 0..levels)."""
        return self.width.shape[0] - 1

    def to(self, device) -> "PlaneFills":
        for k, v in vars(self).items():
            setattr(self, k, v.to(device))
        return self

    def table_index(self, scale: torch.Tensor) -> torch.Tensor:
        """LatentCodec's table choice for (float) scales."""
        return torch.searchsorted(self.scale_bounds, (scale.detach().double() * ONE).contiguous())

    def residual(self, v: torch.Tensor, t: torch.Tensor, level: int) -> torch.Tensor:
        """The plain decoder's value of every symbol v (table t) after `level` plane layers (float64)."""
        return self.interval_mean(v, t, self.width[level][t])

    def interval_mean(self, v: torch.Tensor, t: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """Each symbol v's table mean inside its interval of `width` (a power of 3 up to its table's
        3^n_t, where no plane of it is coded; an escape is known once a plane of it is)."""
        half = self.half[t]
        a = -half + torch.div(v.clamp(-half, half) + half, width, rounding_mode="floor") * width
        b = a + width - 1
        known = ((v < self.lo[t]) | (v > self.hi[t])) & (width < 3 ** self.planes[t])
        a, b = torch.where(known, v, a), torch.where(known, v, b)
        stride = self.cum.shape[1]
        ia = (a - self.lo[t]).clamp(min=0).minimum(self.length[t])
        ib = (b - self.lo[t] + 1).clamp(min=0).minimum(self.length[t]).maximum(ia)
        cum, cum_v = self.cum.flatten(), self.cum_v.flatten()
        w = cum[t * stride + ib] - cum[t * stride + ia]
        s = cum_v[t * stride + ib] - cum_v[t * stride + ia]
        return torch.where(a == b, a.double(), torch.where(w > 0, s / w.clamp(min=1), (a + b).double() / 2))

    def bits(self, residual: torch.Tensor, scale: torch.Tensor, t: torch.Tensor, level: int,
             noisy: bool) -> torch.Tensor:
        """Estimated bits of `level` plane layers for values at `residual` from their means (float,
        Gaussian of `scale`, table t): -log2 of the mass of the interval the value falls in. `noisy`:
        the interval is centred on residual + uniform noise of its width, as training's rate proxy
        (differentiable in the residual); otherwise on the coder's interval (rounding)."""
        return self.interval_bits(residual, scale, t, self.width[level][t], noisy).sum()

    def interval_bits(self, residual: torch.Tensor, scale: torch.Tensor, t: torch.Tensor, width: torch.Tensor,
                      noisy: bool) -> torch.Tensor:
        """`bits` element by element, each value in an interval of its own `width` (a power of 3)."""
        width = width.to(residual.dtype)
        if noisy:
            centre = residual + width * torch.empty_like(residual).uniform_(-0.5, 0.5)
        else:
            centre = width * torch.round(torch.round(residual) / width)
        mass = gaussian_interval_mass((centre - width / 2) / scale, (centre + width / 2) / scale)
        # a value none of whose planes is coded yet costs nothing (noise would charge it up to a bit)
        coded = width < 3 ** self.planes[t]
        return -torch.log2(torch.where(coded, mass.clamp_min(MASS_MIN), 1.0))
