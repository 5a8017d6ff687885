"""Would a decoder trained for truncated files help a plane-layered file? Decode-only: the codec's
networks stay frozen and files do not change.

After k plane layers every latent value is known to an interval, and the plain decoder puts the
table's mean inside it there and runs g_s. Two decoders are tried for files cut short of the full file:

- `fill`: a small network (3x3 convs at the latent's resolution) sees every value's fill, interval width
  and scale and the hyper features, and moves each fill by at most min(half the interval, its scale);
- `synthesis`: a copy of g_s whose first layer also sees log(interval width) of every value (those
  weights start at zero), free to trade detail for safety where the latent is uncertain.

Trained here on training crops for the image MSE at random layer counts short of the full file, each
relative to the plain decode's, so every layer counts alike; prints each layer's PSNR on six Kodak
images (float network, estimated rates), plain against the trained decoder, and the BD-rate over all
layers (the full file is the plain decode in both).

    PYTHONPATH=.:benchmarks python benchmarks/truncated_decoder_probe.py WEIGHTS MINUTES {fill,synthesis}

Float network, estimated rates, one thread. Session 22, on the shipped default: `fill` (`... 40 fill`,
stopped after 8 minutes): 500 steps (batch 4 of 256², two layer counts a step; 1 s a step beside two
training runs) moved no layer by more than 0.004 dB (BD-rate +0.00 %), with no trend between steps
250 and 500. The plane contexts of `plane_context_probe.py` (session 20) found the same for rates: next
to z's mean and scale, the neighbours' intervals say little more about a value. `synthesis` (`... 60
synthesis`, stopped after 500 steps, 9 minutes): +0.04 to +0.12 dB on layers 2–7 but -0.05, -0.12 and
-0.23 dB on layers 10–12 (BD-rate -0.5 %); for layers 1–9 only (`--max-level 8 --gs-lr 5e-5`):
after 250 steps +0.03 to +0.13 dB on layers 2–9 (-1.3 %), after 500 -0.11 to +0.06 dB (+0.5 %). A
tenth of a dB that comes and goes with the noise of the fine-tuning: not worth a second synthesis
transform. (Session 20 fine-tuned g_s itself on every layer count: up to +0.12 dB in the middle for
-0.34 dB on the full file.)
"""

import argparse
import copy

import numpy as np
import torch
from torch import nn

from codec.evaluate import bd_rate
from codec.weights import load_codec, load_float_model
from float_curves import (IMAGES, encoder_input, kodak_image, plane_decode, plane_latents, plane_points,
                          train_for_minutes)


class WidthAwareSynthesis(nn.Module):
    def __init__(self, g_s: nn.Sequential, M: int):
        super().__init__()
        self.g_s = copy.deepcopy(g_s).requires_grad_(True)
        first = g_s[0]
        self.width_in = nn.ConvTranspose2d(M, first.out_channels, first.kernel_size, first.stride, first.padding,
                                           first.output_padding, bias=False)
        nn.init.zeros_(self.width_in.weight)  # starts as g_s

    def forward(self, y_hat, width):
        return self.g_s[1:](self.g_s[0](y_hat) + self.width_in(torch.log(width)))


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
    ap.add_argument("decoder", choices=("fill", "synthesis"))
    ap.add_argument("--hidden", type=int, default=128, help="fill: the network's channels")
    ap.add_argument("--lr", type=float, default=1e-3, help="new weights (fill; synthesis: width inputs)")
    ap.add_argument("--gs-lr", type=float, default=1e-4, help="synthesis: the copy of g_s")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--levels-per-step", type=int, default=2)
    ap.add_argument("--max-level", type=int, default=None,
                    help="train and use the decoder for files of up to this many plane layers (default: all but the full file)")
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_float_model(args.weights).eval().requires_grad_(False)
    fills = load_codec(args.weights).plane_fills()
    top = fills.levels - 1 if args.max_level is None else args.max_level
    if args.decoder == "fill":
        trained = FillRestorer(model.cfg.M, model.cfg.hyper, args.hidden)
        groups = [{"params": trained.parameters(), "lr": args.lr}]
    else:
        trained = WidthAwareSynthesis(model.g_s, model.cfg.M)
        groups = [{"params": trained.g_s.parameters(), "lr": args.gs_lr},
                  {"params": trained.width_in.parameters(), "lr": args.lr}]

    def decode(lat, level, use_trained):
        if not use_trained or level > top:
            return plane_decode(model, fills, lat, level)
        fill = fills.residual(lat.symbols, lat.tables, level).float()
        width = fills.width[level][lat.tables].float()
        if args.decoder == "fill":
            return model.g_s(lat.mean + trained(fill, width, lat.scale, lat.hyper))
        return trained(lat.mean + fill, width)

    images = [kodak_image(name) for name in IMAGES]
    kodak = [(x, plane_latents(model, fills, encoder_input(x))) for x in images]

    def curve(use_trained):
        return plane_points(fills, kodak, lambda lat, level: decode(lat, level, use_trained))

    plain = curve(False)
    print("plain", " ".join(f"{b:.3f}/{q:.2f}" for b, q in plain), flush=True)

    def evaluate():
        trained_curve = curve(True)
        gains = " ".join(f"{b - a:+.3f}" for a, b in zip(plain[:, 1], trained_curve[:, 1]))
        return f"BD-rate {bd_rate(list(map(tuple, plain)), list(map(tuple, trained_curve))):+.2f} %  dB per layer: {gains}"

    rng = np.random.default_rng(5)

    def loss_of(x):
        lat = plane_latents(model, fills, x)
        loss = 0.0
        for k in rng.choice(top + 1, args.levels_per_step, replace=False):
            with torch.no_grad():
                plain_mse = ((decode(lat, k, False) - x) ** 2).mean()
            loss = loss + ((decode(lat, k, True) - x) ** 2).mean() / plain_mse
        return loss

    def save():
        if args.save:
            torch.save(trained.state_dict(), args.save)

    train_for_minutes(args.minutes, args.batch, args.patch, 11, loss_of, torch.optim.Adam(groups), evaluate, 250, save)


if __name__ == "__main__":
    main()
