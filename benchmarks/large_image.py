"""Peak memory of a large-image round trip (issue 5: 6000x4000 within 4 GiB each way).

Builds a photo-like test image from Kodak (a mosaic of upscaled photos, so it has real edges and
texture), then runs `sicc encode`, `sicc decode` and optionally `sicc decode --perceptual` as separate
processes and reports each one's peak RSS (VmHWM), wall time, the sizes and the PSNR.

    python benchmarks/large_image.py ../shared/data/kodak --width 6000 --height 4000 --out /tmp/large
    python benchmarks/large_image.py ../shared/data/kodak --out /tmp/large --skip-plain --perceptual-steps 1 \
        --perceptual-limit-s 600
"""

from __future__ import annotations

import json
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


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_measured(args: list[str], limit_s: float | None = None) -> dict:
    """Run `sicc ARGS` in a child process; its peak RSS (the kernel's high-water mark, polled) and
    wall seconds. With `limit_s`, stop it after that long and report the peak so far."""
    proc = subprocess.Popen([sys.executable, "-c", "from codec.cli import main; main()", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0, peak, stopped = time.perf_counter(), 0, False
    while proc.poll() is None:
        try:
            peak = max(peak, _peak_rss(proc.pid))
        except OSError:
            break
        if limit_s is not None and time.perf_counter() - t0 > limit_s:
            proc.kill()
            stopped = True
            break
        time.sleep(0.2)
    _, err = proc.communicate()
    if proc.returncode != 0 and not stopped:
        raise SystemExit(f"sicc {' '.join(args)} failed: {err.strip()}")
    report = {"peak_rss_bytes": peak, "seconds": round(time.perf_counter() - t0, 1)}
    if stopped:
        report["stopped_after_limit"] = True
        report["stderr"] = err.strip()
    return report


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--width", default=6000, show_default=True)
@click.option("--height", default=4000, show_default=True)
@click.option("--out", "out_dir", default="/tmp/sicc-large", show_default=True, type=click.Path(path_type=Path))
@click.option("--perceptual-steps", type=int, help="Also time/measure `decode --perceptual` with this many steps.")
@click.option("--strength", default=0.1, show_default=True)
@click.option("--prior-weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--perceptual-limit-s", type=float, help="Stop the perceptual decode after this long (peak so far).")
@click.option("--skip-plain", is_flag=True, help="Reuse OUT/large.sic from an earlier run.")
def main(dataset, width, height, out_dir, perceptual_steps, strength, prior_weights, perceptual_limit_s, skip_plain):
    out_dir.mkdir(parents=True, exist_ok=True)
    src, sic, png = out_dir / "large.png", out_dir / "large.sic", out_dir / "large-decoded.png"
    report = {"width": width, "height": height, "limit_bytes": 4 * 2**30}
    if not skip_plain:
        ref = mosaic(dataset, width, height)
        ref.save(src)
        report["encode"] = run_measured(["encode", str(src), "-o", str(sic), "--force", "-q"])
        report["decode"] = run_measured(["decode", str(sic), "-o", str(png), "--force", "-q"])
        decoded = Image.open(png)
        report.update(sic_bytes=sic.stat().st_size, bpp=8 * sic.stat().st_size / (width * height),
                      decoded_size=list(decoded.size), psnr=psnr(np.asarray(ref), np.asarray(decoded)))
    if perceptual_steps:
        args = ["decode", str(sic), "-o", str(out_dir / "large-perceptual.png"), "--force", "-q", "--perceptual",
                "--steps", str(perceptual_steps), "--strength", str(strength), "--layers", "3", "--device", "cpu"]
        args.remove("-q")  # keep the one-line time estimate on stderr
        if prior_weights:
            args += ["--prior-weights", str(prior_weights)]
        report["decode_perceptual"] = {**run_measured(args, perceptual_limit_s), "steps": perceptual_steps,
                                       "layers": 3}
    click.echo(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
