"""Would a context network help a plane-layered file? For planes 3, 2 and 1, a small network (3x3 convs)
sees the hyper features and the coarse latent that every coarser plane left (each value's table mean
inside its interval, as the decoder has it) and refines the Gaussian of that plane's choices: an offset
of the mean and a step of the scale. Trained here by maximum likelihood on training crops, with the
codec frozen; prints the estimated bits of each plane on six Kodak images, z alone against refined.

    python benchmarks/plane_context_probe.py WEIGHTS MINUTES [--hidden 96] [--lr 1e-3]

Estimated rates (continuous Gaussians on the coder's grid), one thread. Session 20, on its GPU file
(`python benchmarks/plane_context_probe.py runs/gpu-s20/p2/P3.safetensors 12`): 899 steps in 12
minutes moved planes 3, 2 and 1 by -2.0 %, -0.9 % and -0.1 % (1.950 -> 1.937 bpp over the three, -0.7 %),
still falling slowly: not worth a format change (docs/training.md, session 20).
"""

import argparse

import torch
from torch import nn

from codec.plane_fills import gaussian_interval_mass
from codec.weights import load_codec, load_float_model, scale_table
from float_curves import IMAGES, encoder_input, kodak_image, plane_latents, train_for_minutes

PLANES = (3, 2, 1)


def mass(d, s, p, q):
    """P(p <= round(N(d, s)) <= q)."""
    return gaussian_interval_mass((p - 0.5 - d) / s, (q + 0.5 - d) / s).clamp_min(1e-9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("minutes", type=float)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_float_model(args.weights).eval().requires_grad_(False)
    g = load_codec(args.weights).plane_fills()
    scales = torch.tensor(scale_table()).float()
    ratio = float(scales[1] / scales[0])
    M, H = model.cfg.M, model.cfg.hyper

    def interval(v, t, width):
        a = -g.half[t] + torch.div(v + g.half[t], width, rounding_mode="floor") * width
        return a, a + width - 1

    def coarse(v, t, m):
        """Each value's table mean inside its interval when the coder reaches plane m."""
        return g.interval_mean(v, t, 3 ** g.planes[t].clamp(max=m)).float()

    def plane_bits(v, t, m, d, s):
        active = (g.planes[t] >= m) & (v >= g.lo[t]) & (v <= g.hi[t])
        vc = v.clamp(g.lo[t], g.hi[t])
        a, b = interval(vc, t, 3**m)
        a2, b2 = interval(vc, t, 3 ** (m - 1))
        lo, hi = g.lo[t], g.hi[t]
        bits = torch.log2(mass(d, s, a.maximum(lo), b.minimum(hi))) - torch.log2(mass(d, s, a2.maximum(lo), b2.minimum(hi)))
        return torch.where(active, bits, torch.zeros_like(bits))

    def net():
        n = nn.Sequential(nn.Conv2d(H + 2 * M, args.hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(args.hidden, args.hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(args.hidden, 2 * M, 3, padding=1))
        nn.init.zeros_(n[-1].weight)
        nn.init.zeros_(n[-1].bias)  # starts as z alone
        return n

    nets = nn.ModuleDict({str(m): net() for m in PLANES})

    def latents(x):
        lat = plane_latents(model, g, x)
        return lat.hyper, lat.mean, lat.symbols, lat.tables

    def refined(m, hyper, mu, v, t):
        r = coarse(v, t, m)
        d, step = nets[str(m)](torch.cat([hyper, mu + r, r], 1)).chunk(2, 1)
        return d, (scales[t] * ratio**step).clamp_min(0.11)

    def evaluate():
        tot, pixels = {m: [0.0, 0.0] for m in PLANES}, 0
        for name in IMAGES:
            image = kodak_image(name)
            h, w = image.shape[2:]
            x = encoder_input(image)
            pixels += h * w
            hyper, mu, v, t = latents(x)
            with torch.no_grad():
                for m in PLANES:
                    tot[m][0] += float(plane_bits(v, t, m, torch.zeros_like(mu), scales[t]).sum())
                    tot[m][1] += float(plane_bits(v, t, m, *refined(m, hyper, mu, v, t)).sum())
        return "  ".join(f"plane {m}: {a / pixels:.4f} -> {b / pixels:.4f} bpp" for m, (a, b) in tot.items())

    def loss_of(x):
        hyper, mu, v, t = latents(x)
        return sum(plane_bits(v, t, m, *refined(m, hyper, mu, v, t)).sum() for m in PLANES) / (x.shape[0] * x.shape[2] * x.shape[3])

    print("start", evaluate(), flush=True)
    train_for_minutes(args.minutes, 8, 256, 7, loss_of, torch.optim.Adam(nets.parameters(), lr=args.lr), evaluate, 500)


if __name__ == "__main__":
    main()
