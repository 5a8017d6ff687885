"""What the CUDA paths do against the CPU on real images (run it where there is a GPU; CI never does).

For each image: encode on the CPU and on CUDA (plain and `--refine`), then decode every layer prefix
of both files on the CPU and through a CUDA codec, and report whether the files are byte-identical,
whether each decodes (the entropy parameters are exact integer work, SPEC §6), how far the CUDA
pixels are from the CPU pixels, and the time of each path. Then `--perceptual` on a crop on both
devices. Prints one JSON object per check and a summary line; exits 1 if a file fails to decode or
a layer decoded on CUDA differs from the CPU by more than rounding allows.

    python benchmarks/cuda_check.py ../shared/data/kodak/kodim23.png ../shared/data/kodak/kodim05.png
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from codec.api import decode_image, encode_image
from codec.container import parse
from codec.evaluate import psnr
from codec.model import PAD_MULTIPLE
from codec.weights import load_codec

# Plain decodes of the same latent on two devices differ by float rounding only: a pixel may flip
# by one code value, rarely two; anything beyond this is a different latent or a broken path.
MAX_PIXEL_DIFF = 4


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def _pixels(x: torch.Tensor, h: int, w: int) -> np.ndarray:
    return x[0, :, :h, :w].mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def check_image(path: Path, weights: Path | None, refine: int, device: str) -> tuple[list[dict], bool]:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = rgb.shape
    cpu_codec, gpu_codec = load_codec(weights, "cpu"), load_codec(weights, device)
    # the CUDA context and kernels load here, outside the timings
    encode_image(Image.fromarray(rgb[:64, :64]), weights=weights, device=device)
    rows, failed = [], False
    for steps in (0, refine):
        files = {}
        for label, dev in (("cpu", "cpu"), ("cuda", device)):
            files[label], files[label + "_s"] = _timed(lambda: encode_image(Image.fromarray(rgb), weights=weights,
                                                                              refine=steps, device=dev))
        row = {"image": path.name, "refine": steps, "same_bytes": files["cpu"] == files["cuda"],
               "bytes_cpu": len(files["cpu"]), "bytes_cuda": len(files["cuda"]),
               "encode_s_cpu": round(files["cpu_s"], 2), "encode_s_cuda": round(files["cuda_s"], 2), "layers": []}
        for made_on in ("cpu", "cuda"):
            cont = parse(files[made_on])
            hp, wp = -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE
            for k in range(1, len(cont.payloads) + 1):
                try:
                    on_cpu, t_cpu = _timed(lambda: cpu_codec.decode(list(cont.payloads[:k]), hp, wp))
                    on_gpu, t_gpu = _timed(lambda: gpu_codec.decode(list(cont.payloads[:k]), hp, wp))
                    a, b = _pixels(on_cpu, h, w), _pixels(on_gpu, h, w)
                    diff = int(np.abs(a.astype(int) - b.astype(int)).max())
                    api = np.asarray(decode_image(files[made_on], weights=weights, layers=k))
                    entry = {"made_on": made_on, "layers": k, "psnr_cpu": round(psnr(rgb, a), 3),
                             "psnr_cuda": round(psnr(rgb, b), 3), "max_pixel_diff": diff,
                             "api_equals_cpu": bool((api == a).all()),
                             "decode_s_cpu": round(t_cpu, 3), "decode_s_cuda": round(t_gpu, 3)}
                    failed |= diff > MAX_PIXEL_DIFF or not entry["api_equals_cpu"]
                except Exception as e:  # a desynchronised decode is exactly what this looks for
                    entry, failed = {"made_on": made_on, "layers": k, "error": repr(e)}, True
                row["layers"].append(entry)
        rows.append(row)
    return rows, failed


def check_perceptual(path: Path, weights: Path | None, crop: int, steps: int, device: str) -> dict:
    rgb = np.asarray(Image.open(path).convert("RGB"))[:crop, :crop].copy()
    data = encode_image(Image.fromarray(rgb), weights=weights, device="cpu", layers=4)
    out = {"image": path.name, "crop": crop, "layers": 4, "steps": steps}
    images = {}
    for label, dev in (("cpu", "cpu"), ("cuda", device)):
        img, t = _timed(lambda: decode_image(data, weights=weights, perceptual=True, steps=steps, seed=1,
                                              device=dev))
        images[label] = np.asarray(img)
        out[f"psnr_{label}"], out[f"seconds_{label}"] = round(psnr(rgb, images[label]), 3), round(t, 2)
    out["psnr_cpu_vs_cuda"] = round(psnr(images["cpu"], images["cuda"]), 2)
    return out


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--refine", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--perceptual-crop", default=256, show_default=True, type=click.IntRange(min=64))
@click.option("--perceptual-steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cuda", show_default=True, help="The device set against the CPU ('cpu': a dry run).")
def main(images, weights, refine, perceptual_crop, perceptual_steps, device):
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_check: no CUDA device")
    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(json.dumps({"torch": torch.__version__, "device": name}), flush=True)
    bad = False
    for path in images:
        rows, failed = check_image(path, weights, refine, device)
        bad |= failed
        for row in rows:
            print(json.dumps(row), flush=True)
    print(json.dumps(check_perceptual(images[0], weights, perceptual_crop, perceptual_steps, device)), flush=True)
    print("cuda_check:", "FAILED" if bad else "ok")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
