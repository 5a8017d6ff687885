"""The diffusion prior for perceptual decoding (SPEC §5): a noise schedule, a small fully
convolutional ε-prediction UNet, and a DDIM/DDPM sampler with an optional guidance term.

The schedule knows nothing of networks; the sampler takes any ε-model and any guidance loss.
Images are in [-1, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class LinearSchedule:
    """DDPM's linear β schedule (1e-4 .. 0.02 over 1000 steps)."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.steps = steps
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alpha_bars = torch.cumprod(1 - self.betas, dim=0)

    def alpha_bar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.alpha_bars[t])

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bars.to(x0.device)[t].float().view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


@dataclass(frozen=True)
class UNetConfig:
    channels: int = 48
    multipliers: tuple[int, ...] = (1, 2, 2)
    groups: int = 8

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UNetConfig":
        d = json.loads(text)
        d["multipliers"] = tuple(d["multipliers"])
        return cls(**d)


TINY_UNET = UNetConfig(channels=8, multipliers=(1, 2), groups=4)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """ε-prediction UNet without attention: fully convolutional, so it runs on any image size
    (sides are padded to a multiple of 2**(levels-1) internally)."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        C, G = cfg.channels, cfg.groups
        tdim = 4 * C
        self.temb = nn.Sequential(nn.Linear(C, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(3, C, 3, padding=1)
        widths = [C * m for m in cfg.multipliers]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        cin = C
        for i, w in enumerate(widths):
            self.down.append(ResBlock(cin, w, tdim, G))
            cin = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = ResBlock(cin, cin, tdim, G)
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(cin + w, w, tdim, G))
            cin = w
        self.out = nn.Sequential(nn.GroupNorm(G, cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1))

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.cfg.multipliers) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        m = self.multiple
        x = F.pad(x, (0, -W % m, 0, -H % m), mode="reflect" if min(H, W) > m else "replicate")
        temb = self.temb(timestep_embedding(t, self.cfg.channels))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, temb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, temb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:
                h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb)
        return self.out(h)[:, :, :H, :W]


def denoising_loss(model: UNet, schedule: LinearSchedule, x0: torch.Tensor) -> torch.Tensor:
    """The DDPM training loss: MSE between the noise and its prediction at a uniform random step."""
    t = torch.randint(0, schedule.steps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    return F.mse_loss(model(schedule.add_noise(x0, t, noise), t).float(), noise)


def sampler_steps(t_start: int, steps: int) -> list[int]:
    """The schedule steps a sampler of `steps` steps visits from t_start down to 0 (fewer when
    t_start < steps)."""
    return torch.linspace(t_start, 0, max(1, steps)).round().long().unique_consecutive().tolist()


def sample(model: Callable, schedule: LinearSchedule, x_start: torch.Tensor, t_start: int, steps: int,
           eta: float = 1.0, guidance: Callable[[torch.Tensor], torch.Tensor] | None = None, zeta: float = 0.6,
           generator: torch.Generator | None = None, on_step: Callable[[int], None] | None = None,
           project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """DDIM (η = 1: DDPM-like ancestral steps) from x_start at step t_start down to a clean image.

    With `guidance`, a loss of the predicted clean image x̂0, every step subtracts ζ·∇_{x_t} loss
    (DPS). With `project`, every step's x̂0 is replaced by project(x̂0) before the update (data
    consistency, as in DDNM), which needs no gradients. Returns the final image, clamped to [-1, 1]."""
    ts = sampler_steps(t_start, steps)
    x = x_start
    x0 = x_start.clamp(-1, 1)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ab, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        with torch.enable_grad():
            x = x.detach().requires_grad_(guidance is not None)
            eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
            x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
            grad = torch.autograd.grad(guidance(x0), x)[0] if guidance is not None else None
        eps = eps.detach()
        if project is not None:
            x0 = project(x0.detach())
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) if t_prev >= 0 else 0.0
        x_next = math.sqrt(ab_prev) * x0.detach() + math.sqrt(max(0.0, 1 - ab_prev - sigma**2)) * eps
        if sigma > 0:
            x_next = x_next + sigma * torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        if grad is not None:
            x_next = x_next - zeta * grad
        x = x_next.detach()
        if on_step is not None:
            on_step(i)
    return x.clamp(-1, 1)
