"""Encoder-side latent refinement, measured before building it: how much would optimising y and z per
image (the decoder unchanged, so no format change) gain over the trained analysis transform?

    python benchmarks/latent_refinement.py weights/sicc-base.safetensors kodim23 60 0.03 256

Takes the top-left CROP² of a Kodak image, optimises (y, z) with Adam for ITERS steps on the mean over
layers 2..9 of rate + lambda_k * 255^2 * MSE (the training relaxation: uniform noise for rates,
straight-through rounding for pixels; the plain decoder's mean fill), and prints every layer's estimated bpp / PSNR before and after, with the
BD-rate (PSNR) of after against before. Float path, one image: screening, not a published number.
"""

import sys
import time

import numpy as np
import torch
from PIL import Image

from codec.evaluate import bd_rate
from codec.model import bits, level_lambdas
from codec.train import model_to_train, psnr


def layer_points(model, x, y, z):
    """(bits per pixel, MSE) for layers 2..9, through the model's own quantisation: the training
    relaxation (noisy rates, straight-through pixels) in train mode, rounding in eval mode."""
    z_hat, z_likelihoods = model.entropy_bottleneck(z)
    hyper = model.h_s(z_hat)
    y_hat, likelihoods = model._quantized_slices(y, hyper, len(model.cfg.slices))
    total_bits, points = bits(z_likelihoods), []
    for level, slice_likelihoods in enumerate(likelihoods, start=1):
        total_bits = total_bits + bits(slice_likelihoods)
        x_hat = model.g_s(model._fill_missing_slices(hyper, y_hat[:level]))
        points.append((total_bits / (x.shape[2] * x.shape[3]), ((x_hat - x) ** 2).mean()))
    return points


def as_curve(points):
    return [(b.item(), psnr(d.item())) for b, d in points]


def main(path: str, name: str, iters: int, lr: float, crop: int):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, _ = model_to_train(path)  # constant buffers (the likelihood floor) from the constructor
    model.requires_grad_(False)
    x = torch.from_numpy(np.array(Image.open(f"../shared/data/kodak/{name}.png").convert("RGB")))
    x = x.permute(2, 0, 1)[None].float()[:, :, :crop, :crop] / 255
    lambdas = level_lambdas(len(model.cfg.slices))[1:]
    model.eval()
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
        before = as_curve(layer_points(model, x, y, z))
    y, z = y.requires_grad_(True), z.requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=lr)
    model.train()
    start = time.time()
    for _ in range(iters):
        points = layer_points(model, x, y, z)
        loss = sum(b + lam * 255**2 * d for lam, (b, d) in zip(lambdas, points)) / len(points)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = as_curve(layer_points(model, x, y, z))
    print(f"{name} top-left {crop}², {iters} iterations at lr {lr}: {time.time() - start:.0f} s")
    print("before  " + " ".join(f"{b:.3f}/{q:.2f}" for b, q in before))
    print("after   " + " ".join(f"{b:.3f}/{q:.2f}" for b, q in after))
    print(f"BD-rate (PSNR) after vs before: {bd_rate(before, after):+.1f} %")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
