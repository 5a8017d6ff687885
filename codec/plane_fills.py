"""The plane decoder's fills as tensors, for training: what a decoder of K layers of a plane-layered file
(planes.py, latent.py) puts in every latent value, for a whole batch at once.

After k plane layers, a value whose table t has had plane m coded lies in an interval of width
3^(m-1) on the coder's grid (its table's range where no plane of it has been coded, itself where it
escaped and its first plane has been coded), and the plain decoder takes the table's mean inside it:
`PlaneState.expected()`, here from the same integer counts.
"""

from __future__ import annotations

import numpy as np
import torch

from .exact import ONE
from .planes import Layer, PlaneModel


class PlaneFills:
    def __init__(self, model: PlaneModel, schedule: list[Layer], scale_bounds: np.ndarray):
        def tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a))

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
        width, half = self.width[level][t], self.half[t]
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
