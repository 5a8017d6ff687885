"""Encoder-side latent refinement (codec/refine.py, `sicc encode --refine STEPS`) on a crop, in float:
a quick screen of steps and learning rate before measuring real files with `sicc eval --refine`.

    python benchmarks/latent_refinement.py weights/sicc-base.safetensors kodim23 30 0.06 256 [LPIPS_WEIGHT]

Takes the top-left CROP² of a Kodak image, refines (y, z) for STEPS Adam steps at LR (with LPIPS in the
objective at LPIPS_WEIGHT, default 0), and prints every layer's estimated bpp / PSNR / LPIPS (float
entropy model, rounding) before and after, with BD-rates of after against before at equal PSNR and at
equal LPIPS. One crop: screening, not a published number.
"""

import sys
import time

import torch

from codec.evaluate import bd_rate
from codec.lpips import load_lpips
from codec.model import reset_constant_buffers
from codec.refine import layer_points, plane_layer_points, refine_latents
from codec.train import psnr
from codec.weights import load_codec, load_float_model
from float_curves import kodak_image


def main(path: str, name: str, iters: int, lr: float, crop: int, lpips_weight: float = 0.0):
    torch.set_num_threads(1)
    model = reset_constant_buffers(load_float_model(path))  # the fp16 likelihood floor is 0
    fills = load_codec(path).plane_fills()  # plane layering: the decoder's fills and bits as tensors
    lpips = load_lpips()
    x = kodak_image(name)[:, :, :crop, :crop]

    def curve(y, z):
        with torch.no_grad():
            return [(b.item(), psnr(torch.mean((x_hat - x) ** 2).item()), lpips(x, x_hat.clamp(0, 1)).item())
                    for b, x_hat in (layer_points(model, x, y, z) if fills is None else
                                     plane_layer_points(model, fills, x, y, z, range(fills.levels + 1)))]

    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
    start = time.time()
    y_refined, z_refined = refine_latents(model, x, y, z, iters, lr, lpips_weight, fills)
    seconds = time.time() - start
    before, after = curve(y, z), curve(y_refined, z_refined)
    print(f"{name} top-left {crop}², {iters} steps at lr {lr}, LPIPS weight {lpips_weight}: {seconds:.0f} s")
    for label, points in (("before", before), ("after", after)):
        print(f"{label:8}" + " ".join(f"{b:.3f}/{q:.2f}/{l:.3f}" for b, q, l in points))
    print(f"BD-rate after vs before: PSNR {bd_rate([p[:2] for p in before], [p[:2] for p in after]):+.1f} %, "
          f"LPIPS {bd_rate([(b, -l) for b, _, l in before], [(b, -l) for b, _, l in after]):+.1f} %")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), *map(float, sys.argv[6:7]))
