"""The few learned-compression layers the codec needs: GDN, a factorized entropy bottleneck, a lower
bound with a useful gradient, and straight-through rounding.

These follow Ballé et al. (and CompressAI's well-known formulation, with the same parameter names so
state dicts are interchangeable), but live here so that `import codec` does not pull in CompressAI's
dataset/point-cloud stack (torch_geometric, scipy, pandas: seconds of start-up for every `sicc` call).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _LowerBoundFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad):
        x, bound = ctx.saved_tensors
        # below the bound, still let gradients through that would push x back up
        passes = (x >= bound) | (grad < 0)
        return passes.type_as(grad) * grad, None


class LowerBound(nn.Module):
    """max(x, bound), differentiable towards the feasible side."""

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LowerBoundFn.apply(x, self.bound.to(x.dtype))


def quantize_ste(x: torch.Tensor) -> torch.Tensor:
    """Rounding with the identity gradient."""
    return x + (torch.round(x) - x).detach()


class NonNegativeParametrizer(nn.Module):
    """A value v >= minimum stored as p with v = max(p, sqrt(minimum + ε²))² - ε²: keeps small values trainable."""

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18):
        super().__init__()
        self.register_buffer("pedestal", torch.tensor([reparam_offset**2]))
        self.lower_bound = LowerBound((minimum + reparam_offset**2) ** 0.5)

    def init(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.clamp(x + self.pedestal, min=float(self.pedestal)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalization: y_i = x_i / sqrt(β_i + Σ_j γ_ij x_j²) (inverse: times)."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma_reparam = NonNegativeParametrizer()
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(C, C, 1, 1)
        norm = F.conv2d(x * x, gamma, beta)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))


class EntropyBottleneck(nn.Module):
    """A learned factorized density per channel (Ballé et al. 2018, appendix 6.1) for the hyper-latent.

    In training, values get uniform noise; in eval they are rounded around the channel medians.
    `quantiles` (per channel: the tail_mass/2, 1/2 and 1 - tail_mass/2 quantiles) are fitted by
    `loss()` and give the medians."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3, 3), init_scale: float = 10.0,
                 tail_mass: float = 1e-9, likelihood_bound: float = 1e-9):
        super().__init__()
        self.filters = tuple(filters)
        widths = (1, *self.filters, 1)
        scale = init_scale ** (1 / (len(self.filters) + 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(self.filters) + 1):
            fill = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), fill)))
            self.biases.append(nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        target = math.log(2 / tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))
        self.likelihood_lower_bound = LowerBound(likelihood_bound)

    def _get_medians(self) -> torch.Tensor:
        return self.quantiles[:, :, 1:2]

    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        """x: [C, 1, L] -> logits of the CDF at x, per channel."""

        def param(p):
            return p.detach() if stop_gradient else p

        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(param(matrix)), x) + param(self.biases[i])
            if i < len(self.factors):
                x = x + torch.tanh(param(self.factors[i])) * torch.tanh(x)
        return x

    def _likelihood(self, x: torch.Tensor, stop_gradient: bool = False):
        """P(value in [x - 1/2, x + 1/2]) and the CDF logits at both ends, for x: [C, 1, L]."""
        lower = self._logits_cumulative(x - 0.5, stop_gradient)
        upper = self._logits_cumulative(x + 0.5, stop_gradient)
        return torch.sigmoid(upper) - torch.sigmoid(lower), lower, upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, C, H, W] -> (quantised or noisy x, likelihoods), both [B, C, H, W]."""
        values = x.transpose(0, 1).reshape(x.shape[1], 1, -1)  # [C, 1, B*H*W]
        if self.training:
            values = values + torch.empty_like(values).uniform_(-0.5, 0.5)
        else:
            medians = self._get_medians()
            values = torch.round(values - medians) + medians
        likelihood = self.likelihood_lower_bound(self._likelihood(values)[0])
        shape = (x.shape[1], x.shape[0], *x.shape[2:])
        return (values.reshape(shape).transpose(0, 1).contiguous(),
                likelihood.reshape(shape).transpose(0, 1).contiguous())

    def loss(self) -> torch.Tensor:
        """Fits `quantiles` to the density (the auxiliary loss)."""
        return (self._logits_cumulative(self.quantiles, stop_gradient=True) - self.target).abs().sum()
