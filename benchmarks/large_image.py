"""Peak memory of a large-image round trip (issue 5: 6000x4000 within 4 GiB each way).

Builds a photo-like test image from Kodak (a mosaic of upscaled photos, so it has real edges and
texture), then runs `sicc encode`, `sicc decode` and optionally `sicc decode --perceptual` as separate
processes and reports each one's peak RSS (the kernel's ru_maxrss), wall time, the sizes and the PSNR.

    python benchmarks/large_image.py ../shared/data/kodak --width 6000 --height 4000 --out /tmp/large
    python benchmarks/large_image.py ../shared/data/kodak --perceptual-steps 1 --prior-weights weights/sicc-prior.safetensors
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from codec.evaluate import psnr


def mosaic(dataset: Path, width: int, height: int) -> Image.Image:
    """Kodak photos upscaled 2x and tiled row by row until the canvas is full."""
    photos = sorted(p for p in dataset.iterdir() if p.suffix.lower() == ".png")
    canvas = Image.new("RGB", (width, height))
    x = y = i = 0
    while y < height:
        tile = Image.open(photos[i % len(photos)]).convert("RGB")
        tile = tile.resize((tile.width * 2, tile.height * 2), Image.Resampling.BICUBIC)
        canvas.paste(tile, (x, y))
        x += tile.width
        if x >= width:
            x, y = 0, y + tile.height
        i += 1
    return canvas


def run_measured(args: list[str]) -> dict:
    """Run `sicc ARGS` in a child process; its peak RSS in bytes and wall seconds."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "rc = subprocess.run(sys.argv[1:]).returncode; "
             "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-c", "from codec.cli import main; main()",
                          *args], capture_output=True, text=True, check=True)
    rc, kib, seconds = out.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"sicc {' '.join(args)} failed: {out.stderr.strip()}")
    return {"peak_rss_bytes": int(kib) * 1024, "seconds": round(float(seconds), 1)}


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--width", default=6000, show_default=True)
@click.option("--height", default=4000, show_default=True)
@click.option("--out", "out_dir", default="/tmp/sicc-large", show_default=True, type=click.Path(path_type=Path))
@click.option("--perceptual-steps", type=int, help="Also time/measure `decode --perceptual` with this many steps.")
@click.option("--strength", default=0.1, show_default=True)
@click.option("--prior-weights", type=click.Path(dir_okay=False, path_type=Path))
def main(dataset, width, height, out_dir, perceptual_steps, strength, prior_weights):
    out_dir.mkdir(parents=True, exist_ok=True)
    src, sic, png = out_dir / "large.png", out_dir / "large.sic", out_dir / "large-decoded.png"
    ref = mosaic(dataset, width, height)
    ref.save(src)
    report = {"width": width, "height": height, "limit_bytes": 4 * 2**30}
    report["encode"] = run_measured(["encode", str(src), "-o", str(sic), "--force", "-q"])
    report["decode"] = run_measured(["decode", str(sic), "-o", str(png), "--force", "-q"])
    decoded = Image.open(png)
    report.update(sic_bytes=sic.stat().st_size, bpp=8 * sic.stat().st_size / (width * height),
                  decoded_size=list(decoded.size), psnr=psnr(np.asarray(ref), np.asarray(decoded)))
    if perceptual_steps:
        args = ["decode", str(sic), "-o", str(out_dir / "large-perceptual.png"), "--force", "-q", "--perceptual",
                "--steps", str(perceptual_steps), "--strength", str(strength), "--layers", "3", "--device", "cpu"]
        if prior_weights:
            args += ["--prior-weights", str(prior_weights)]
        report["decode_perceptual"] = {**run_measured(args), "steps": perceptual_steps, "layers": 3}
    click.echo(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
