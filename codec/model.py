"""The progressive codec network (SPEC §3): GDN transforms, a hyperprior, and a channel-conditional
mean-scale model over uneven latent slices. Level k transmits z and slices 1..k; the decoder fills
the missing slices from their predicted means.

This module is the float (training) network. The entropy-parameter path used for real bitstreams is
its exact integer copy, built by `ExactEntropyModel`; nothing here knows about files or bit streams.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .exact import ONE, IntSequential, to_fixed
from .layers import GDN, EntropyBottleneck, LowerBound, quantize_ste

SCALE_MIN = 0.11  # lower bound of the Gaussian scales, as in CompressAI
LIKELIHOOD_MIN = 1e-9


LAYERINGS = ("slices", "planes")


@dataclass(frozen=True)
class ModelConfig:
    N: int = 96  # channels of the image transforms
    M: int = 192  # latent channels
    Z: int = 96  # hyper-latent channels
    hyper: int = 128  # features the hyper-synthesis hands to every slice network
    slices: tuple[int, ...] = (8, 8, 16, 16, 24, 32, 40, 48)  # uneven: small first layers, low rates
    slice_hidden: tuple[int, int] = (128, 96)
    # How a file's layers cut the latent: "slices" sends slice k whole in layer 1 + k (SIC); "planes"
    # has one slice (mean and scale from z alone) sent as trit planes, coarse to fine, across all
    # channels (planes.py): a low layer holds many values roughly rather than a few exactly.
    layering: str = "slices"
    # Residual blocks in g_s after each of its first two inverse GDNs (1/8 and 1/4 of the image's
    # size): decoder capacity where it is cheap per pixel. Their last convs start at zero, so a file
    # grown from one without them decodes the same until trained.
    synthesis_blocks: int = 0

    def __post_init__(self):
        if sum(self.slices) != self.M:
            raise ValueError(f"slices {self.slices} do not add up to M={self.M}")
        if self.layering not in LAYERINGS:
            raise ValueError(f"layering {self.layering!r} is not one of {LAYERINGS}")
        if self.layering == "planes" and len(self.slices) != 1:
            raise ValueError("plane layering codes one slice")
        if not isinstance(self.synthesis_blocks, int) or self.synthesis_blocks < 0:
            raise ValueError(f"synthesis_blocks {self.synthesis_blocks!r} is not a count")

    def to_json(self) -> str:
        d = asdict(self)
        if not d["synthesis_blocks"]:  # files without blocks stay readable by versions before them
            del d["synthesis_blocks"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = json.loads(text)
        d["slices"] = tuple(d["slices"])
        d["slice_hidden"] = tuple(d["slice_hidden"])
        return cls(**d)


# A tiny model for tests and smoke runs (untrained it still codes exactly).
TINY_CONFIG = ModelConfig(N=16, M=32, Z=16, hyper=16, slices=(8, 8, 16), slice_hidden=(16, 16))

# The whole network downsamples by 64 (16 for y, 4 more for z): images are padded to a multiple of it.
PAD_MULTIPLE = 64


def _conv(cin, cout, k=5, stride=2):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin, cout, k=5, stride=2):
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


def _upconv(cin, cout):
    """Sub-pixel x2 upsampling: exact in integer arithmetic, unlike a transposed conv's overlaps."""
    return [nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2)]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _synthesis(N: int, M: int, blocks: int) -> nn.Sequential:
    """g_s. Its modules keep the names 0..6 they had before residual blocks existed (the blocks are
    named r1_*, r3_*), so weights files without blocks load into it unchanged."""
    layers = [_deconv(M, N), GDN(N, inverse=True), _deconv(N, N), GDN(N, inverse=True),
              _deconv(N, N), GDN(N, inverse=True), _deconv(N, 3)]
    named = []
    for i, layer in enumerate(layers):
        named.append((str(i), layer))
        if i in (1, 3):
            named += [(f"r{i}_{b}", ResidualBlock(N)) for b in range(blocks)]
    return nn.Sequential(OrderedDict(named))


class ProgressiveCodec(nn.Module):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        N, M, Z = cfg.N, cfg.M, cfg.Z
        self.g_a = nn.Sequential(
            _conv(3, N), GDN(N), _conv(N, N), GDN(N), _conv(N, N), GDN(N), _conv(N, M)
        )
        self.g_s = _synthesis(N, M, cfg.synthesis_blocks)
        self.h_a = nn.Sequential(
            _conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), _conv(N, N), nn.LeakyReLU(inplace=True), _conv(N, Z)
        )
        # Conv/ReLU/PixelShuffle only: these two get exact integer copies (see exact.py).
        self.h_s = nn.Sequential(
            *_upconv(Z, N), nn.ReLU(), *_upconv(N, N), nn.ReLU(), nn.Conv2d(N, cfg.hyper, 3, padding=1), nn.ReLU()
        )
        h1, h2 = cfg.slice_hidden
        self.slice_nets = nn.ModuleList()
        for k, size in enumerate(cfg.slices):
            cin = cfg.hyper + sum(cfg.slices[:k])
            self.slice_nets.append(nn.Sequential(
                nn.Conv2d(cin, h1, 3, padding=1), nn.ReLU(),
                nn.Conv2d(h1, h2, 3, padding=1), nn.ReLU(),
                nn.Conv2d(h2, 2 * size, 3, padding=1),
            ))
        self.entropy_bottleneck = EntropyBottleneck(Z)
        self.scale_bound = LowerBound(SCALE_MIN)
        # Training may run the big image-resolution transforms (g_a, h_a, g_s) under bf16 autocast
        # (about 2x faster on CPUs with AMX/AVX512-BF16); everything that sets rates stays fp32.
        self.transform_dtype: torch.dtype | None = None

    def _transform(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.transform_dtype is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=self.transform_dtype):
            return net(x).float()

    # -- float path (training, estimates) ---------------------------------------------------------

    def slice_params(self, k: int, hyper: torch.Tensor, previous: list[torch.Tensor]):
        out = self.slice_nets[k](torch.cat([hyper, *previous], dim=1))
        mean, scale = out.chunk(2, dim=1)
        return mean, scale

    def gaussian_likelihood(self, residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """P(round(residual) = value) for a zero-mean Gaussian of the given scale, integer bins."""
        scale = self.scale_bound(scale)
        v = residual.abs()
        upper = torch.special.ndtr((0.5 - v) / scale)
        lower = torch.special.ndtr((-0.5 - v) / scale)
        return (upper - lower).clamp_min(LIKELIHOOD_MIN)

    def _quantized_slices(self, y: torch.Tensor, hyper: torch.Tensor, count: int):
        """The first `count` slices quantised around their predicted means (straight-through), with
        their likelihoods under the noisy-quantisation proxy (training) or rounding (eval)."""
        y_hat: list[torch.Tensor] = []
        liks = []
        for k, y_k in enumerate(y.split(list(self.cfg.slices), dim=1)[:count]):
            mean, scale = self.slice_params(k, hyper, y_hat)
            noisy = y_k + torch.empty_like(y_k).uniform_(-0.5, 0.5) if self.training else torch.round(y_k - mean) + mean
            liks.append(self.gaussian_likelihood(noisy - mean, scale))
            y_hat.append(quantize_ste(y_k - mean) + mean)
        return y_hat, liks

    def _fill_missing_slices(self, hyper: torch.Tensor, y_hat: list[torch.Tensor]) -> torch.Tensor:
        """Transmitted slices followed by the predicted means of the rest (the plain decoder's fill)."""
        filled = list(y_hat)
        for k in range(len(y_hat), len(self.cfg.slices)):
            mean, _ = self.slice_params(k, hyper, filled)
            filled.append(mean)
        return torch.cat(filled, dim=1)

    def forward(self, x: torch.Tensor, level: int | None = None) -> dict:
        """Training pass. Returns the full reconstruction and, for `level` (slices transmitted,
        0..len(slices)), the reconstruction with the missing slices filled by their means.
        Likelihoods: "z" and one tensor per slice; also the analysis output "y" and the hyper features
        "hyper" (training's plane levels decode from them)."""
        y = self._transform(self.g_a, x)
        z_hat, z_lik = self.entropy_bottleneck(self._transform(self.h_a, y))
        hyper = self.h_s(z_hat)
        y_hat, liks = self._quantized_slices(y, hyper, len(self.cfg.slices))
        out = {"x_full": self._transform(self.g_s, torch.cat(y_hat, dim=1)), "likelihoods": {"z": z_lik, "y": liks},
               "y": y, "hyper": hyper}
        if level is not None and level < len(self.cfg.slices):
            out["x_level"] = self._transform(self.g_s, self._fill_missing_slices(hyper, y_hat[:level]))
        return out

    def decoded_hyper(self, y: torch.Tensor) -> torch.Tensor:
        """The hyper features a decoder gets for y: z rounded around the bottleneck's medians."""
        z = self.h_a(y)
        medians = self.entropy_bottleneck.quantiles[:, 0, 1].reshape(1, -1, 1, 1)
        return self.h_s(torch.round(z - medians) + medians)

    def reencode(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Encode x and decode `level` slices (rounding with straight-through gradients): the map whose
        fixed points are the images that reproduce a file's layers (used by perceptual decoding)."""
        y = self.g_a(x)
        hyper = self.decoded_hyper(y)
        y_hat, _ = self._quantized_slices(y, hyper, level)
        return self.g_s(self._fill_missing_slices(hyper, y_hat))

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()


def reset_constant_buffers(model: ProgressiveCodec) -> ProgressiveCodec:
    """Constant buffers (bounds, pedestals, targets) as the constructor makes them. Weights files hold
    them in fp16, where the 1e-9 likelihood floor is 0, and a zero likelihood gives infinite rates and
    non-finite gradients (sessions 4 and 5): anything that takes gradients through a loaded model needs this."""
    with torch.random.fork_rng(devices=[]):  # building the reference must not move the seeded stream
        constants = dict(ProgressiveCodec(model.cfg).named_buffers())
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(constants[name])
    return model


def bits(likelihoods: torch.Tensor) -> torch.Tensor:
    return -torch.log2(likelihoods).sum()


class ExactEntropyModel:
    """The integer copy of the entropy-parameter path: hyper-synthesis and slice networks.

    Inputs and outputs are fixed-point integers (see exact.py): hyper features from z symbols, and
    for slice k the predicted mean and scale from the hyper features and the decoded slices < k.
    """

    def __init__(self, model: ProgressiveCodec):
        self.cfg = model.cfg
        self.h_s = IntSequential(model.h_s)
        self.slice_nets = [IntSequential(net) for net in model.slice_nets]
        self.z_median = to_fixed(model.entropy_bottleneck._get_medians().reshape(-1))

    def hyper(self, z_symbols: torch.Tensor) -> torch.Tensor:
        """z symbols [1, Z, h, w] (integers, relative to the medians) -> fixed-point hyper features."""
        z_fixed = z_symbols.to(torch.float64) * ONE + self.z_median[None, :, None, None]
        return self.h_s(z_fixed)

    def slice_params(self, k: int, hyper: torch.Tensor, previous: list[torch.Tensor]):
        out = self.slice_nets[k](torch.cat([hyper, *previous], dim=1))
        mean, scale = out.chunk(2, dim=1)
        return mean, scale


def level_gammas(levels: int, weight: float = 1.0) -> list[float]:
    """LPIPS weights for levels 0..levels: SIC's gamma = 2^(5 - k'/8) over its 16 levels k', our level
    k mapped to k' = 16k/levels, times `weight` (--lpips-weight). Low levels weigh LPIPS most: there
    the mean-filled reconstruction is blurriest."""
    return [weight * 2 ** (5 - 2 * k / levels) for k in range(levels + 1)]


def level_lambdas(levels: int, low: float = 0.0018, high: float = 0.18) -> list[float]:
    """Rate-distortion weights for levels 0..levels (slices transmitted), geometric from q1 to q8 of
    CompressAI's zoo; the loss uses lambda * 255**2 * MSE for images in [0, 1]."""
    return [low * math.exp(math.log(high / low) * k / levels) for k in range(levels + 1)]
