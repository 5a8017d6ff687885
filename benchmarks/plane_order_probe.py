"""Does the order of the elements inside a trit plane matter? A float probe on plane-layered weights.

The shipped schedule codes each plane's choices widest Gaussian table first, whatever the channel.
But a latent channel's error reaches the image through the synthesis with its own gain g_c, so one
bit spent on a channel the synthesis amplifies removes more image error than one on a quiet channel.
This probe measures g_c (image MSE per unit of latent noise, channel by channel, on training crops),
then, plane by plane, compares the partial-plane RD curve of two orders of the same choices:

  table:    widest table first (the shipped order, continuous instead of cut at table boundaries)
  priority: g_c x (variance the choice removes) / (bits it costs), both from the table (DPICT's rule
            with the synthesis gain in it)

Rates are the float model's estimated bits under rounding, distortions the float decode, on six
Kodak images (as float_curves). Plane-major order is kept: plane m is finished before plane m-1.

    python benchmarks/plane_order_probe.py weights/sicc-base.safetensors
"""

import sys

import numpy as np
import torch

from codec.data import CropSampler
from codec.evaluate import bd_rate
from codec.train import psnr
from codec.weights import load_codec, load_float_model
from float_curves import IMAGES, encoder_input, kodak_image, plane_latents

FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def channel_gains(model, fills, crops: torch.Tensor, chunk: int = 24) -> np.ndarray:
    """Mean image MSE added by uniform noise of unit width on one latent channel, per channel."""
    M = model.cfg.M
    gains = np.zeros(M)
    with torch.no_grad():
        for x in crops:
            lat = plane_latents(model, fills, x[None])
            y_hat = lat.mean + lat.symbols.float()
            ref = model.g_s(y_hat)
            for c0 in range(0, M, chunk):
                cs = list(range(c0, min(M, c0 + chunk)))
                batch = y_hat.repeat(len(cs), 1, 1, 1)
                for i, c in enumerate(cs):
                    batch[i, c] += torch.empty_like(batch[i, c]).uniform_(-0.5, 0.5)
                err = ((model.g_s(batch) - ref) ** 2).mean((1, 2, 3))
                gains[cs] += err.numpy()
    return gains / len(crops) / (1 / 12)


def table_plane_stats(planes_model) -> tuple[np.ndarray, np.ndarray]:
    """dv[t, m], dr[t, m]: the variance (in latent units squared) that plane m's choice removes from a
    value of table t, and its entropy in bits, both under the table's own distribution."""
    T = len(planes_model.planes)
    top = int(planes_model.max_plane)
    dv, dr = np.zeros((T, top + 2)), np.zeros((T, top + 2))  # zero where the table has no plane m
    for t in range(T):
        lo, n = int(planes_model.lo[t]), int(planes_model.length[t])
        counts = np.diff(planes_model.cum[t][: n + 1]).astype(np.float64)
        p = counts / counts.sum()
        v = lo + np.arange(n)
        h = int(planes_model.half[t])

        def spread(width):
            cell = (v + h) // width
            var, ent = 0.0, 0.0
            for k in np.unique(cell):
                sel = cell == k
                pk = p[sel].sum()
                if pk > 0:
                    mu = (p[sel] * v[sel]).sum() / pk
                    var += (p[sel] * (v[sel] - mu) ** 2).sum()
                    ent -= pk * np.log2(pk)
            return var, ent

        for m in range(1, int(planes_model.planes[t]) + 1):
            v_hi, e_hi = spread(3 ** m)
            v_lo, e_lo = spread(3 ** (m - 1))
            dv[t, m], dr[t, m] = v_hi - v_lo, e_lo - e_hi
    return dv, dr


def element_bits(fills, lat, width: torch.Tensor) -> torch.Tensor:
    return fills.interval_bits(lat.symbols.double(), lat.scale.double(), lat.tables, width.long(), noisy=False)


def curve(model, fills, samples, keys, plane):
    """(bpp, PSNR) means over the images with plane `plane` coded for the top fraction (by bits) of its
    elements in order of `keys` (descending), the coarser planes complete, the finer ones absent."""
    points = np.zeros((len(FRACTIONS), 2))
    with torch.no_grad():
        for (x, lat), key in zip(samples, keys):
            n_t = fills.planes[lat.tables]
            before = (3 ** torch.minimum(n_t, torch.tensor(plane))).double()
            after = (3 ** torch.minimum(n_t, torch.tensor(plane - 1))).double()
            b0 = element_bits(fills, lat, before)
            gain = (element_bits(fills, lat, after) - b0).flatten()
            order = torch.argsort(key.flatten(), descending=True, stable=True)
            cum = torch.cumsum(gain[order], 0)
            h, w = x.shape[2:]
            for i, f in enumerate(FRACTIONS):
                k = min(int(torch.searchsorted(cum, f * cum[-1]).item()) + 1, cum.numel())
                done = torch.zeros(gain.numel(), dtype=torch.bool)
                done[order[:k]] = True
                width = torch.where(done.reshape(before.shape), after, before)
                res = fills.interval_mean(lat.symbols, lat.tables, width.long())
                rec = model.g_s(lat.mean + res.float())[..., :h, :w].clamp(0, 1)
                bits = lat.z_bits + float(b0.sum() + cum[k - 1])  # the coded elements' added bits
                points[i] += (bits / (h * w), psnr(((rec - x) ** 2).mean().item()))
    return points / len(samples)


def main(path: str):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_float_model(path).eval()
    codec = load_codec(path)
    fills = codec.plane_fills()
    crops = CropSampler("../shared/data/train", 256, seed=5, limit=60).batch(8)
    gains = channel_gains(model, fills, crops)
    print("channel gains: min %.3g median %.3g max %.3g; top 10 %% of channels hold %.0f %% of the sum" % (
        gains.min(), np.median(gains), gains.max(), 100 * np.sort(gains)[::-1][: len(gains) // 10].sum() / gains.sum()))
    dv, dr = table_plane_stats(codec.planes)
    images = [kodak_image(n) for n in IMAGES]
    samples = [(x, plane_latents(model, fills, encoder_input(x))) for x in images]
    g = torch.as_tensor(gains).reshape(1, -1, 1, 1)
    all_a, all_b = [], []
    for plane in (3, 2, 1):
        keys_a = [lat.tables.double() for _, lat in samples]
        per_bit = np.divide(dv[:, plane], dr[:, plane], out=np.zeros(len(dv)), where=dr[:, plane] > 0)
        keys_b = [g * torch.as_tensor(per_bit)[lat.tables] for _, lat in samples]
        a = curve(model, fills, samples, keys_a, plane)
        b = curve(model, fills, samples, keys_b, plane)
        all_a += [tuple(p) for p in a]
        all_b += [tuple(p) for p in b]
        print(f"plane {plane}")
        for f, pa, pb in zip(FRACTIONS, a, b):
            print(f"  {f:.3f}: table {pa[0]:.4f}/{pa[1]:.2f}  priority {pb[0]:.4f}/{pb[1]:.2f}")
        print(f"  BD-rate priority vs table, this plane: {bd_rate([tuple(p) for p in a], [tuple(p) for p in b]):+.2f} %",
              flush=True)
    print(f"all planes: {bd_rate(all_a, all_b):+.2f} %")


if __name__ == "__main__":
    main(sys.argv[1])
