"""How much plane layering could give a slice-layered file: its latent sent as trit planes (coarse to
fine across all channels, codec/planes.py's idea) instead of slice by slice, every value's mean and
scale taken from the slice networks with the earlier slices fully known. No decoder has that
knowledge before the last plane, so this is an upper bound for plane layering on these weights (a
decodable file takes its means and scales from z alone: `sicc train codec --layering planes`).

    python benchmarks/plane_oracle.py weights/sicc-base.safetensors [--order sigma|gain]

Estimated rates (Gaussian masses, as the float network's), plain reconstructions (each value's
Gaussian mean inside its interval), the six screening images of float_curves.py; prints the layer
curve, the plane curve (each plane cut in five by the chosen order) and the BD-rate between them.
"""

import argparse
import math

import numpy as np
import torch
from PIL import Image

from codec.evaluate import bd_rate
from codec.model import bits
from codec.plane_fills import gaussian_interval_mass
from codec.train import psnr
from codec.weights import load_float_model
from float_curves import IMAGES, level_curve

PLANES = 7  # values in +-(3^7 - 1) / 2
FRACTIONS = [0.1, 0.25, 0.5, 0.75, 1.0]
SQRT_2PI = math.sqrt(2 * math.pi)


def phi(t):
    return torch.exp(-0.5 * t * t) / SQRT_2PI


def mass(a, b, s):
    """P(a <= q <= b) for q = round(N(0, s))."""
    return gaussian_interval_mass((a - 0.5) / s, (b + 0.5) / s).clamp_min(1e-300)


def interval_mean(a, b, s):
    lo, hi = (a - 0.5) / s, (b + 0.5) / s
    m = s * (phi(lo) - phi(hi)) / mass(a, b, s)
    return torch.where(a == b, a, m.clamp(a, b))


def interval_var(a, b, s):
    lo, hi = ((a - 0.5) / s).clamp(-40, 40), ((b + 0.5) / s).clamp(-40, 40)
    z = mass(a, b, s)
    m1 = (phi(lo) - phi(hi)) / z
    v = s * s * (1 + (lo * phi(lo) - hi * phi(hi)) / z - m1 * m1)
    return torch.where(a == b, torch.zeros_like(v), v.clamp_min(0) + 1 / 12)


@torch.no_grad()
def plane_curve(model, x, order: str) -> list[tuple[float, float]]:
    pixels = x.shape[2] * x.shape[3]
    y = model.g_a(x)
    z_hat, z_lik = model.entropy_bottleneck(model.h_a(y))
    z_bits = bits(z_lik).item()
    hyper = model.h_s(z_hat)
    y_hat, means, scales = [], [], []
    for k, y_k in enumerate(y.split(list(model.cfg.slices), dim=1)):
        mean, scale = model.slice_params(k, hyper, y_hat)  # the oracle: earlier slices exact
        y_hat.append(torch.round(y_k - mean) + mean)
        means.append(mean)
        scales.append(model.scale_bound(scale))
    mu, s = torch.cat(means, 1).double(), torch.cat(scales, 1).double()
    q = torch.round(torch.cat(y_hat, 1).double() - mu)
    half = (3**PLANES - 1) // 2
    a, b = torch.full_like(q, -half).flatten(), torch.full_like(q, half).flatten()
    qf, sf = q.flatten(), s.flatten()

    def point(spent):
        rec = model.g_s((mu + interval_mean(a, b, sf).view_as(q)).float()).clamp(0, 1)
        return ((z_bits + spent) / pixels, psnr(((rec - x) ** 2).mean().item()))

    spent, points = 0.0, [point(0.0)]
    for p in range(PLANES):
        w = 3 ** (PLANES - p - 1)
        lows, highs = [a, a + w, a + 2 * w], [a + w - 1, a + 2 * w - 1, b]
        parent = mass(a, b, sf)
        probs = torch.stack([mass(lo, hi, sf) / parent for lo, hi in zip(lows, highs)]).clamp(1e-300, 1)
        probs = probs / probs.sum(0, keepdim=True)
        third = ((qf - a) // w).long().clamp(0, 2)
        cost = -torch.log2(probs.gather(0, third[None])[0])
        if order == "gain":  # expected variance removed per expected bit (DPICT)
            entropy = -(probs * torch.log2(probs)).sum(0)
            after = sum(probs[i] * interval_var(lows[i], highs[i], sf) for i in range(3))
            priority = (interval_var(a, b, sf) - after).clamp_min(0) / (entropy + 1e-9)
        else:  # widest scales first: what a decoder can order by from the tables alone
            priority = sf
        ranked = torch.argsort(priority, descending=True)
        new_a, new_b = torch.stack(lows).gather(0, third[None])[0], torch.stack(highs).gather(0, third[None])[0]
        done = 0
        for f in FRACTIONS:
            upto = int(round(f * ranked.numel()))
            chosen = ranked[done:upto]
            a[chosen], b[chosen] = new_a[chosen], new_b[chosen]
            spent += cost[chosen].sum().item()
            done = upto
            points.append(point(spent))
    return points


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--order", choices=["sigma", "gain"], default="sigma")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_float_model(args.weights).eval()
    images = [torch.from_numpy(np.array(Image.open(f"../shared/data/kodak/{n}.png").convert("RGB")))
              .permute(2, 0, 1)[None].float() / 255 for n in IMAGES]
    planes = np.array([plane_curve(model, x, args.order) for x in images]).mean(0)
    layers, _ = level_curve(args.weights, images)
    print("layers:", " ".join(f"{r:.3f}/{d:.2f}" for r, d in layers))
    print("planes:", " ".join(f"{r:.3f}/{d:.2f}" for r, d in planes))
    print(f"BD-rate (PSNR), planes vs layers: {bd_rate(layers, [tuple(p) for p in planes if p[0] > 0.05]):+.1f} %")


if __name__ == "__main__":
    main()
