"""Encoder-side latent refinement: spend encode time for a smaller file at the same quality.

The analysis transform is one amortised guess for every image. Here y (and, for MSE weights, z) is
optimised for this image (Adam on the training objective, averaged over the layers, so every prefix of
the file gains), and the result is coded by the usual exact path: the decoder and the format do not
change. This is float work on the encoder only; a refined file may differ between machines, and like
every file it decodes identically everywhere.
"""

from __future__ import annotations

import copy
from itertools import accumulate

import torch
import torch.nn.functional as F

from .device import has_fast_bf16
from .entropy import VALUE_LIMIT
from .layers import quantize_ste
from .model import PAD_MULTIPLE, ProgressiveCodec, bits, level_gammas, level_lambdas, reset_constant_buffers
from .plane_fills import PlaneFills
from .tiling import apply_tiled

# Measured on Kodak crops (docs/training.md): for slice layering (session 7) 30 steps at 0.06 gained about
# as much as 60 at 0.03, and optimising every layer each step beat a random layer per step at equal time;
# for plane layering (session 21, three 512² crops, real files) 0.01 beat 0.02, 0.03 and 0.06, 60 steps
# gained no more than 30, and the full file with two other layer counts per step gained about as much as
# with three others (-4.1 % against -4.3 % over all layers, a third slower).
REFINE_LR = {"slices": 0.06, "planes": 0.01}
PLANE_LEVELS_PER_STEP = 3
# Latent tiles (768 px) with context, bounding memory on large images. Multiples of 4 keep z's grid
# (y / 4) aligned with every tile; a Kodak image is a single tile.
REFINE_TILE, REFINE_MARGIN = 48, 4
Y_PER_PX = PAD_MULTIPLE // 4  # y is at 1/16 of the image resolution


def _hyper(model: ProgressiveCodec, z: torch.Tensor, held_hyper):
    """Hyper features and z's bits: through the bottleneck, or `held_hyper` where z is held."""
    if held_hyper is not None:
        return held_hyper
    z_hat, z_likelihoods = model.entropy_bottleneck(z)
    return model.h_s(z_hat), bits(z_likelihoods)


def layer_points(model: ProgressiveCodec, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, first: int = 1,
                 held_hyper: tuple[torch.Tensor, torch.Tensor] | None = None):
    """(bits per pixel, reconstruction) of layers first..L (layer k: slices 1..k-1 transmitted, the rest
    mean-filled), through the model's own quantisation: the training relaxation in train mode, rounding
    in eval mode. `held_hyper` (hyper features, z bits) stands in for z's path when z is held."""
    hyper, z_bits = _hyper(model, z, held_hyper)
    y_hat, likelihoods = model._quantized_slices(y, hyper, len(model.cfg.slices))
    rates = accumulate([z_bits, *map(bits, likelihoods)])
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    return [(total_bits / pixels, model._transform(model.g_s, model._fill_missing_slices(hyper, y_hat[:level])))
            for level, total_bits in enumerate(rates) if level + 1 >= first]


def plane_layer_points(model: ProgressiveCodec, fills: PlaneFills, x: torch.Tensor, y: torch.Tensor,
                       z: torch.Tensor, levels, held_hyper=None):
    """`layer_points` for plane layering: (bits per pixel, reconstruction) of z and k plane layers for
    each k in `levels` (fills.levels: the full file). The reconstruction is the plain decoder's (the
    table's mean in each value's interval), straight through to y; the bits are `fills.bits`, noisy
    in train mode as training's rate proxy, on the coder's intervals in eval mode. Bits per pixel of
    a batch are over all of its images (training's plane levels, `train.progressive_loss`)."""
    hyper, z_bits = _hyper(model, z, held_hyper)
    mean, scale = model.slice_params(0, hyper, [])
    scale = model.scale_bound(scale)
    y_hat = quantize_ste(y - mean) + mean
    with torch.no_grad():
        symbols = torch.round(y_hat - mean).clamp(-VALUE_LIMIT, VALUE_LIMIT).long()
        tables = fills.table_index(scale)
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    points = []
    for level in levels:
        with torch.no_grad():
            filled = mean + fills.residual(symbols, tables, level).to(mean.dtype)
        y_bits = fills.bits(y - mean, scale, tables, level, noisy=model.training)
        x_hat = model._transform(model.g_s, y_hat + (filled - y_hat).detach())
        points.append(((z_bits + y_bits) / pixels, x_hat))
    return points


def refinement_loss(model: ProgressiveCodec, x, y, z, lpips=None, lpips_weight: float = 0.0,
                    held_hyper=None, fills: PlaneFills | None = None) -> torch.Tensor:
    """Mean over layers 2..L of the training objective's terms: bpp + lambda_k * 255^2 * MSE, plus
    gamma_k * LPIPS (of the clamped image, as in training) with `lpips`.

    Layer 1 (z alone) is left out: with it in the mean, one image's z bought layer 1's quality with
    z bits that every layer then pays (MSE weights, six Kodak images: +3.7 % against plain encodes at
    equal PSNR, without it -14.8 %; docs/results.md). Where z is held (LPIPS weights) it is a constant.

    Plane layering (`fills` given) takes the full file and PLANE_LEVELS_PER_STEP - 1 of its other
    plane-layer counts 1..L-1 at random (torch's stream), with lambda_k and gamma_k spread over the
    L + 1 layers as over slice levels. Without the full file in every step, the coarse levels' straight-
    through gradients moved y at its expense (three Kodak crops, 30 steps: the full file 5 % larger at
    0.5 dB less than unrefined, session 21)."""
    if fills is None:
        count = len(model.cfg.slices)
        levels = range(1, count + 1)
        points = layer_points(model, x, y, z, first=2, held_hyper=held_hyper)
    else:
        count = fills.levels
        levels = sorted((torch.randperm(count - 1)[:PLANE_LEVELS_PER_STEP - 1] + 1).tolist()) + [count]
        points = plane_layer_points(model, fills, x, y, z, levels, held_hyper)
    lambdas, gammas = level_lambdas(count), level_gammas(count, lpips_weight)
    loss = 0.0
    for level, (bpp, x_hat) in zip(levels, points):
        loss = loss + bpp + lambdas[level] * 255**2 * torch.mean((x_hat - x) ** 2)
        if lpips is not None:
            loss = loss + gammas[level] * lpips(x, x_hat.clamp(0, 1)).mean()
    return loss / len(points)


def _refine_tile(model: ProgressiveCodec, packed: torch.Tensor, steps: int, lr: float, lpips, lpips_weight: float,
                 fills: PlaneFills | None):
    M, Z = model.cfg.M, model.cfg.Z
    y, z_up, x_folded = packed.split([M, Z, packed.shape[1] - M - Z], dim=1)
    x = F.pixel_shuffle(x_folded, Y_PER_PX)
    y = y.clone().requires_grad_(True)
    # z is refined for MSE weights only. There it bought layer 1 (z alone) 3.2 dB for fewer bits; with
    # LPIPS weights it spent twice the bits on layer 1 for no gain on layers 2..L, and holding it at the
    # analysis value measured better on Kodak (docs/results.md, session 10).
    hold_z = lpips is not None
    z = z_up[:, :, ::4, ::4].clone().requires_grad_(not hold_z)
    opt = torch.optim.Adam([y] if hold_z else [y, z], lr=lr)
    # a held z reaches y's objective as the decoder will see it, rounded; computed once
    held_hyper = decoded_hyper(model, z) if hold_z else None
    for _ in range(steps):
        loss = refinement_loss(model, x, y, z, lpips, lpips_weight, held_hyper, fills)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.cat([y.detach(), _upsample4(z.detach())], dim=1)


def decoded_hyper(model: ProgressiveCodec, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hyper features and z bits of z rounded as the decoder rounds it, also from a model in train
    mode (which would add uniform noise instead)."""
    bottleneck, training = model.entropy_bottleneck, model.entropy_bottleneck.training
    with torch.no_grad():
        bottleneck.eval()
        try:
            z_hat, z_likelihoods = bottleneck(z)
        finally:
            bottleneck.train(training)
        return model.h_s(z_hat), bits(z_likelihoods)


def _upsample4(z: torch.Tensor) -> torch.Tensor:
    return z.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def refine_latents(model: ProgressiveCodec, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, steps: int,
                   lr: float | None = None, lpips_weight: float = 0.0,
                   fills: PlaneFills | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y [1, M, H/16, W/16] and z [1, Z, H/64, W/64] from the analysis of x (padded, in [0, 1]),
    optimised for `steps` Adam steps at `lr` (default: REFINE_LR of the model's layering);
    `lpips_weight` > 0 adds LPIPS as `sicc train --lpips-weight` does, and holds z. Plane-layered
    models need `fills` (the decoder's plane layering as tensors). Seeded (the same input gives the
    same result on a machine); neither `model` nor the global random stream is touched."""
    if (fills is None) != (model.cfg.layering == "slices"):
        raise ValueError("plane layering refines with the decoder's plane fills, slice layering without")
    lr = REFINE_LR[model.cfg.layering] if lr is None else lr
    lpips = None
    if lpips_weight > 0:
        from .lpips import load_lpips

        lpips = copy.deepcopy(load_lpips()).requires_grad_(False).to(x.device)  # the cached one stays put
    work = reset_constant_buffers(copy.deepcopy(model)).requires_grad_(False).train()
    # The synthesis passes dominate; under bf16 autocast they ran 1.7x faster on a CPU with AMX for the
    # same gain, but emulated bf16 (AVX2-only CPUs) is slower than fp32. Rates always stay fp32.
    work.transform_dtype = torch.bfloat16 if has_fast_bf16(x.device) else None
    # Tiles see x, y and z at y's resolution: x folded into channels, z repeated 4x4.
    packed = torch.cat([y, _upsample4(z), F.pixel_unshuffle(x, Y_PER_PX)], dim=1)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(0)
        refined = apply_tiled(lambda t: _refine_tile(work, t, steps, lr, lpips, lpips_weight, fills), packed, 1, 1,
                              REFINE_TILE, REFINE_MARGIN)
    y_new, z_up = refined.split([model.cfg.M, model.cfg.Z], dim=1)
    return y_new, z_up[:, :, ::4, ::4]
