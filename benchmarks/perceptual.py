"""Plain vs --sample vs --perceptual decodes at low layer counts (issue 4's measurements).

For each image (a centre crop), encode once with the codec weights, then per layer count compare to the
source: PSNR and LPIPS of the plain decode, the synonymous decode (--sample) and perceptual decodes
for each strength / step count / ζ; the idempotence residual (PSNR between the plain decode of the
re-encoded perceptual output and the plain decode); and seconds per perceptual decode on this machine.

    python benchmarks/perceptual.py ../shared/data/kodak --images 6 --crop 256 --layers 2,3 \
        --strengths 0.3,1.0 --steps 10,20 --guidance project,dps --prior-weights weights/sicc-prior.safetensors --out perceptual.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from codec import container
from codec.api import decode_image, encode_image
from codec.evaluate import lpips, psnr
from codec.perceptual import ZETA


def centre_crop(img: Image.Image, size: int) -> Image.Image:
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--images", default=6, show_default=True, help="First N images of the dataset.")
@click.option("--crop", default=256, show_default=True)
@click.option("--layers", default="2,3", show_default=True)
@click.option("--strengths", default="0.3,0.5,1.0", show_default=True)
@click.option("--steps", default="25", show_default=True)
@click.option("--guidance", "methods", default="project", show_default=True, help="project, dps or both.")
@click.option("--zeta", default=ZETA, show_default=True, help="DPS step.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prior-weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="perceptual.json", show_default=True)
def main(dataset, images, crop, layers, strengths, steps, methods, zeta, weights, prior_weights, threads, out):
    torch.set_num_threads(threads)
    rows = []
    paths = sorted(p for p in dataset.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:images]
    for path in paths:
        src = centre_crop(Image.open(path).convert("RGB"), crop)
        ref = np.asarray(src)
        data = encode_image(src, weights=weights)
        header = container.parse(data).header
        for k in (int(v) for v in layers.split(",")):
            plain = np.asarray(decode_image(data, weights=weights, layers=k))
            variants = [("plain", {}, plain, 0.0), ("sample", {}, np.asarray(
                decode_image(data, weights=weights, layers=k, sample=True, seed=0)), 0.0)]
            for strength in floats(strengths):
                for n in (int(v) for v in steps.split(",")):
                    for method in methods.split(","):
                        t0 = time.perf_counter()
                        img = decode_image(data, weights=weights, layers=k, perceptual=True, strength=strength,
                                           steps=n, guidance=method, zeta=zeta, device="cpu",
                                           prior_weights=prior_weights, seed=0)
                        variants.append(("perceptual", {"strength": strength, "steps": n, "guidance": method},
                                         np.asarray(img), time.perf_counter() - t0))
            for name, settings, rec, seconds in variants:
                again = np.asarray(decode_image(encode_image(Image.fromarray(rec), weights=weights),
                                                weights=weights, layers=k))
                row = {"image": path.name, "layers": k, "decode": name, **settings,
                       "bpp": 8 * container.prefix_size(header, k) / crop**2, "psnr": psnr(ref, rec),
                       "lpips": lpips(ref, rec), "idempotence_psnr": psnr(again, plain), "seconds": seconds}
                rows.append(row)
                click.echo(json.dumps(row), err=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary(rows)}, indent=1))
    click.echo(markdown(summary(rows)))


def summary(rows: list[dict]) -> list[dict]:
    def key(r):
        return r["layers"], r["decode"], r.get("strength", -1), r.get("steps", 0), r.get("guidance", "")

    out = []
    for k in sorted({key(r) for r in rows}):
        group = [r for r in rows if key(r) == k]
        out.append({"layers": k[0], "decode": k[1], "strength": k[2], "steps": k[3], "guidance": k[4],
                    "images": len(group), **{m: float(np.mean([r[m] for r in group]))
                                             for m in ("bpp", "psnr", "lpips", "idempotence_psnr", "seconds")}})
    return out


def markdown(summary_rows: list[dict]) -> str:
    lines = ["| layers | bpp | decode | strength | steps | guidance | PSNR | LPIPS | idempotence PSNR | s/image |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary_rows:
        p = r["decode"] == "perceptual"
        lines.append(f"| {r['layers']} | {r['bpp']:.3f} | {r['decode']} | {r['strength'] if p else ''} | "
                     f"{r['steps'] if p else ''} | {r['guidance']} | {r['psnr']:.2f} | {r['lpips']:.4f} | "
                     f"{r['idempotence_psnr']:.2f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
