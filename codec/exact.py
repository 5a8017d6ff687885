"""Exact integer arithmetic for the networks that decide probability tables (SPEC §6).

A float network computes scale indices and means a few ulps differently on another CPU, GPU or
thread count, and a single different index desynchronises the range decoder. The entropy-parameter
networks (hyper-synthesis and slice context networks) are therefore evaluated as integer networks
(Ballé et al., ICLR 2019): integer weights, integer activations, integer accumulation.

Integers are carried in float64 tensors. Every product and partial sum is an integer below 2**53, so
float64 represents it exactly and the result is the same for any summation order, blocking, FMA use
or thread count; power-of-two rescaling and floor are exact too. Only ops with that property are used
here: convolution (multiply-add), adding integers, scaling by powers of two, floor, clamp, ReLU and
pixel shuffle. The networks are small and run at 1/16 and 1/64 of the image resolution, so they
always run on the CPU.

Fixed point: an activation value v is stored as the integer round(v * 2**FRAC_BITS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FRAC_BITS = 10
ONE = float(2**FRAC_BITS)
WEIGHT_BITS = 11  # |integer weight| <= 2**WEIGHT_BITS
ACT_LIMIT = float(2**24)  # |integer activation| <= 2**24, i.e. |v| <= 16384
_EXACT_LIMIT = 2.0**53
# Largest unfolded input (elements) one conv call may build: bounds memory on big images.
_CHUNK_ELEMENTS = 2**24

DTYPE = torch.float64
DEVICE = torch.device("cpu")


def to_fixed(x: torch.Tensor) -> torch.Tensor:
    """Float tensor -> fixed-point integers (float64 on the CPU)."""
    return torch.round(x.detach().to(DEVICE, DTYPE) * ONE)


def from_fixed(a: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (a / ONE).to(dtype)


class IntConv:
    """One exact conv layer: out = floor((W*a + b) / 2**e + 1/2), then ReLU and pixel shuffle if asked.

    Built from a trained float conv: per output channel c, weights are scaled by 2**e_c (e_c picked so
    the largest weight uses WEIGHT_BITS bits) and rounded; the bias is scaled by 2**(FRAC_BITS + e_c).
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, shuffle: int = 1):
        w = conv.weight.detach().to(DEVICE, DTYPE)
        cout, cin, kh, kw = w.shape
        if cin * kh * kw * ACT_LIMIT * 2.0**WEIGHT_BITS >= _EXACT_LIMIT:
            raise ValueError("conv too wide for exact float64 accumulation")
        peak = w.abs().amax(dim=(1, 2, 3))
        _, exp2 = torch.frexp(torch.where(peak > 0, peak, torch.ones_like(peak)))
        e = (WEIGHT_BITS - exp2).to(DTYPE)  # peak * 2**e < 2**WEIGHT_BITS
        scale = torch.pow(2.0, e)
        self.weight = torch.round(w * scale[:, None, None, None])
        b = conv.bias.detach().to(DEVICE, DTYPE) if conv.bias is not None else torch.zeros(cout, dtype=DTYPE)
        self.bias = torch.round(b * scale * ONE)[None, :, None, None]
        self.inv_scale = (1.0 / scale)[None, :, None, None]  # exact: powers of two
        self.padding = (kh // 2, kw // 2)
        self.relu = relu
        self.shuffle = shuffle

    def _conv(self, a: torch.Tensor) -> torch.Tensor:
        """The integer convolution, in row bands when the image is large (exact either way)."""
        cout, cin, kh, kw = self.weight.shape
        rows = max(1, _CHUNK_ELEMENTS // (cin * kh * kw * a.shape[3]))
        if rows >= a.shape[2]:
            return F.conv2d(a, self.weight, padding=self.padding)
        ph, pw = self.padding
        padded = F.pad(a, (pw, pw, ph, ph))
        bands = [F.conv2d(padded[:, :, r : r + rows + 2 * ph], self.weight) for r in range(0, a.shape[2], rows)]
        return torch.cat(bands, dim=2)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        acc = self._conv(a) + self.bias
        out = torch.floor(acc * self.inv_scale + 0.5).clamp_(-ACT_LIMIT, ACT_LIMIT)
        if self.relu:
            out = out.clamp_(min=0.0)
        if self.shuffle > 1:
            out = F.pixel_shuffle(out, self.shuffle)
        return out


class IntSequential:
    """An exact copy of an `nn.Sequential` made of Conv2d, ReLU and PixelShuffle modules."""

    def __init__(self, seq: nn.Sequential):
        mods = list(seq)
        self.layers: list[IntConv] = []
        i = 0
        while i < len(mods):
            conv = mods[i]
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(f"cannot make {type(conv).__name__} exact")
            relu, shuffle = False, 1
            i += 1
            while i < len(mods) and not isinstance(mods[i], nn.Conv2d):
                if isinstance(mods[i], nn.ReLU):
                    relu = True
                elif isinstance(mods[i], nn.PixelShuffle):
                    shuffle = mods[i].upscale_factor
                else:
                    raise TypeError(f"cannot make {type(mods[i]).__name__} exact")
                i += 1
            self.layers.append(IntConv(conv, relu, shuffle))

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            a = layer(a)
        return a
