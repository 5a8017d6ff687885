"""Would a finer ladder of intervals help the layers inside a plane? Trit planes (each plane narrows every
value threefold: the shipped coder) against sign-magnitude bit planes with a dead zone (JPEG 2000's
embedded quantiser: twofold, the zero cell 2^p - 1 wide on each side), on the same latents and tables.
Each element's interval after each plane, the table's mean inside it, ideal bits (-log2 of the interval's
mass under the element's table, so both ladders end at the same full file); planes coarse to fine, each
cut into eighths of its bits widest table first (the shipped order). Float network, the six screening
images of float_curves.py, one thread (about 7 minutes).

    PYTHONPATH=.:benchmarks python benchmarks/plane_ladder_probe.py weights/sicc-base.safetensors [IMAGES]

Session 28, on session 27's shipped file (trained for trit planes): dead zone against trit +0.91 % over
all points, -3.97 % between 0.3 and 0.6 bpp, -0.21 % between 0.2 and 0.7, +1.02 % between 0.7 and 2.5
(BD-rates of the points inside each range). No clear gain: the trit planes stay.
"""
import sys

import numpy as np
import torch

from codec.evaluate import bd_rate
from codec.train import psnr
from codec.weights import load_codec, load_float_model
from float_curves import IMAGES, encoder_input, kodak_image, plane_latents

FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def trit_cell(v, t, pm, m):
    """The cell of width 3^m (on table t's grid from -h_t) holding v: its ends."""
    w = 3 ** m
    h = pm.half[t]
    w_t = np.minimum(w, 2 * h + 1)  # a table narrower than the cell: its whole range
    a = -h + ((v + h) // w_t) * w_t
    return a, a + w_t - 1


def deadzone_cell(v, t, pm, p):
    """The dead-zone quantiser's cell of step 2^p holding v: its ends."""
    s = 2 ** p
    mag = np.abs(v)
    k = mag // s
    a_pos, b_pos = k * s, k * s + s - 1
    zero = k == 0
    a = np.where(zero, -(s - 1), np.where(v > 0, a_pos, -b_pos))
    b = np.where(zero, s - 1, np.where(v > 0, b_pos, -a_pos))
    return a, b


def cell_bits(pm, t, a, b):
    """Ideal bits that narrow an element of table t to [a, b]: -log2 of the cell's share of the counts."""
    w = pm.weight(t, a, b).astype(np.float64)
    total = pm.cum[t, -1].astype(np.float64)
    return -np.log2(np.maximum(w, 1) / total)


def ladder_curve(model, pm, samples, cell, levels):
    """Mean (bpp, PSNR) over the images after each eighth of each step between `levels` (coarse to fine)."""
    pts = []
    for x, lat in samples:
        h, w = x.shape[2:]
        t = lat.tables.numpy().ravel().astype(np.int64)
        v = lat.symbols.numpy().ravel().astype(np.int64)
        v = np.clip(v, pm.lo[t], pm.hi[t])  # escapes (rare) as the table's edge value, in both ladders
        order = np.argsort(-t, kind="stable")
        img_pts = []
        prev_a, prev_b = cell(v, t, pm, levels[0])
        prev_bits = cell_bits(pm, t, prev_a, prev_b)
        for lev in levels[1:]:
            a, b = cell(v, t, pm, lev)
            bits = cell_bits(pm, t, a, b)
            gain = (bits - prev_bits)[order]
            cum = np.cumsum(gain)
            for f in FRACTIONS:
                k = min(int(np.searchsorted(cum, f * cum[-1])) + 1, cum.size)
                done = np.zeros(v.size, bool)
                done[order[:k]] = True
                ca, cb = np.where(done, a, prev_a), np.where(done, b, prev_b)
                res = np.where(ca == cb, ca, pm.mean(t, ca, cb))
                total_bits = lat.z_bits + prev_bits.sum() + cum[k - 1]
                with torch.no_grad():
                    y = lat.mean + torch.from_numpy(res.reshape(lat.symbols.shape)).float()
                    rec = model.g_s(y)[..., :h, :w].clamp(0, 1)
                img_pts.append((total_bits / (h * w), psnr(((rec - x) ** 2).mean().item())))
            prev_a, prev_b, prev_bits = a, b, bits
        pts.append(img_pts)
    return [tuple(p) for p in np.mean(np.array(pts), 0)]


def main(path: str, count: int):
    torch.set_num_threads(1)
    model = load_float_model(path).eval()
    codec = load_codec(path)
    fills, pm = codec.plane_fills(), codec.planes
    images = [kodak_image(n) for n in IMAGES[:count]]
    samples = [(x, plane_latents(model, fills, encoder_input(x))) for x in images]
    top = int(pm.max_plane)
    trit = ladder_curve(model, pm, samples, trit_cell, list(range(top, -1, -1)))
    top_bit = int(np.ceil(np.log2(pm.half.max() + 1)))  # the dead zone covers every table
    dead = ladder_curve(model, pm, samples, deadzone_cell, list(range(top_bit, -1, -1)))
    for name, c in (("trit", trit), ("deadzone", dead)):
        print(name, " ".join(f"{b:.3f}/{p:.2f}" for b, p in c[::4]), f"... {c[-1][0]:.3f}/{c[-1][1]:.2f}")
    print(f"BD-rate deadzone vs trit, all: {bd_rate(trit, dead):+.2f} %")
    for lo, hi in ((0.2, 0.7), (0.3, 0.6), (0.7, 2.5)):
        tt = [p for p in trit if lo <= p[0] <= hi]
        dd = [p for p in dead if lo <= p[0] <= hi]
        print(f"  {lo}-{hi} bpp: {bd_rate(tt, dd):+.2f} %")


main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else len(IMAGES))
