"""Encoder-side latent refinement (codec/refine.py, `sicc encode --refine STEPS`) on a crop, in float:
a quick screen of steps and learning rate before measuring real files with `sicc eval --refine`.

    python benchmarks/latent_refinement.py weights/sicc-base.safetensors kodim23 30 0.06 256

Takes the top-left CROP² of a Kodak image, refines (y, z) for STEPS Adam steps at LR, and prints every
layer's estimated bpp / PSNR (float entropy model, rounding) before and after, with the BD-rate (PSNR)
of after against before. One crop: screening, not a published number.
"""

import sys
import time

import numpy as np
import torch
from PIL import Image

from codec.evaluate import bd_rate
from codec.model import reset_constant_buffers
from codec.refine import layer_points, refine_latents
from codec.train import psnr
from codec.weights import load_float_model


def main(path: str, name: str, iters: int, lr: float, crop: int):
    torch.set_num_threads(1)
    model = reset_constant_buffers(load_float_model(path))  # the fp16 likelihood floor is 0
    x = torch.from_numpy(np.array(Image.open(f"../shared/data/kodak/{name}.png").convert("RGB")))
    x = x.permute(2, 0, 1)[None].float()[:, :, :crop, :crop] / 255

    def curve(y, z):
        with torch.no_grad():
            return [(b.item(), psnr(d.item())) for b, d in layer_points(model, x, y, z)]

    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
    start = time.time()
    y_refined, z_refined = refine_latents(model, x, y, z, iters, lr)
    seconds = time.time() - start
    before, after = curve(y, z), curve(y_refined, z_refined)
    print(f"{name} top-left {crop}², {iters} steps at lr {lr}: {seconds:.0f} s")
    print("before  " + " ".join(f"{b:.3f}/{q:.2f}" for b, q in before))
    print("after   " + " ".join(f"{b:.3f}/{q:.2f}" for b, q in after))
    print(f"BD-rate (PSNR) after vs before: {bd_rate(before, after):+.1f} %")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
