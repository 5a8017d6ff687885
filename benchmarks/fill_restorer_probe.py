"""Would a decoder-side network that refines the plain decoder's fills help a plane-layered file?

After k plane layers every latent value is known to an interval and the plain decoder puts the
table's mean inside it there. A small network (3x3 convs at the latent's resolution) sees every
value's fill, interval width and scale and the hyper features, and moves each fill by at most
min(half the interval, its scale); the codec stays frozen and files do not change (it is decode-only).
Trained here on training crops for the image MSE of the plain decode at random layer counts, each
relative to the plain fill's, so every layer counts alike; prints each layer's PSNR on six Kodak images
(float network, estimated rates), plain against refined fills, and the BD-rate over all layers.

    PYTHONPATH=.:benchmarks python benchmarks/fill_restorer_probe.py WEIGHTS MINUTES [--hidden 128] [--lr 1e-3]

Float network, estimated rates, one thread. Session 22, on the shipped default
(`... weights/sicc-base.safetensors 40`, stopped after 8 minutes): 500 steps (batch 4 of 256², two layer
counts a step; 1 s a step beside two training runs) moved no layer by more than 0.004 dB (BD-rate
+0.00 %), with no trend between steps 250 and 500; not pursued. The plane contexts of
`plane_context_probe.py` (session 20) found the same for rates: next to z's mean and scale, the
neighbours' intervals say little more about a value.
"""

import argparse
import time

import numpy as np
import torch
from torch import nn

from codec.data import CropSampler
from codec.entropy import VALUE_LIMIT
from codec.evaluate import bd_rate
from codec.model import PAD_MULTIPLE, bits
from codec.train import psnr
from codec.weights import load_codec, load_float_model
from float_curves import IMAGES, kodak_image


class FillRestorer(nn.Module):
    def __init__(self, M: int, hyper: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 * M + hyper, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, M, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)  # starts as the plain fill

    def forward(self, fill, width, scale, hyper):
        reach = torch.minimum((width - 1) / 2, scale)  # 0 where the value is known exactly
        feats = torch.cat([fill / scale, torch.log(width), torch.log(scale), hyper], 1)
        return fill + reach * torch.tanh(self.net(feats))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("minutes", type=float)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--levels-per-step", type=int, default=2)
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_float_model(args.weights).eval().requires_grad_(False)
    fills = load_codec(args.weights).plane_fills()
    L = fills.levels
    restorer = FillRestorer(model.cfg.M, model.cfg.hyper, args.hidden)

    def latents(x):
        with torch.no_grad():
            y = model.g_a(x)
            hyper = model.decoded_hyper(y)
            mean, scale = model.slice_params(0, hyper, [])
            scale = model.scale_bound(scale)
            sym = torch.round(y - mean).clamp(-VALUE_LIMIT, VALUE_LIMIT).long()
            return hyper, mean, scale, sym, fills.table_index(scale), bits(model.entropy_bottleneck(model.h_a(y))[1])

    def decode(lat, level, restore):
        hyper, mean, scale, sym, t, _ = lat
        fill = fills.residual(sym, t, level).float()
        if restore:
            width = fills.width[level][t].float()
            fill = restorer(fill, width, scale, hyper)
        return model.g_s(mean + fill)

    kodak = []
    for name in IMAGES:
        x = kodak_image(name)
        h, w = x.shape[2:]
        xp = torch.nn.functional.pad(x, (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE), mode="replicate")
        lat = latents(xp)
        hyper, mean, scale, sym, t, z_bits = lat
        rates = [float(z_bits + fills.bits(sym.double(), scale.double(), t, k, noisy=False)) / (h * w)
                 for k in range(L + 1)]
        kodak.append((x, lat, rates))

    def evaluate():
        plain, restored = np.zeros((L + 1, 2)), np.zeros((L + 1, 2))
        with torch.no_grad():
            for x, lat, rates in kodak:
                h, w = x.shape[2:]
                for k in range(L + 1):
                    for out, restore in ((plain, False), (restored, True)):
                        rec = decode(lat, k, restore)[..., :h, :w].clamp(0, 1)
                        out[k] += (rates[k], psnr(float(((rec - x) ** 2).mean())))
        plain, restored = plain / len(kodak), restored / len(kodak)
        gains = " ".join(f"{b - a:+.3f}" for a, b in zip(plain[:, 1], restored[:, 1]))
        return f"BD-rate {bd_rate(list(map(tuple, plain)), list(map(tuple, restored))):+.2f} %  dB per layer: {gains}"

    base = evaluate()
    print("start", base, flush=True)
    sampler = CropSampler("../shared/data/train", args.patch, seed=11)
    opt = torch.optim.Adam(restorer.parameters(), lr=args.lr)
    rng = np.random.default_rng(5)
    t0, step = time.time(), 0
    while time.time() - t0 < args.minutes * 60:
        x = sampler.batch(args.batch)
        lat = latents(x)
        loss = 0.0
        for k in rng.choice(L, args.levels_per_step, replace=False):
            with torch.no_grad():
                plain = ((decode(lat, k, False) - x) ** 2).mean()
            loss = loss + ((decode(lat, k, True) - x) ** 2).mean() / plain
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 250 == 0:
            print(step, f"{time.time() - t0:.0f} s", evaluate(), flush=True)
            if args.save:
                torch.save(restorer.state_dict(), args.save)
    print("end", step, evaluate(), flush=True)
    if args.save:
        torch.save(restorer.state_dict(), args.save)


if __name__ == "__main__":
    main()
