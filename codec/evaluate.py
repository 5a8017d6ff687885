"""`sicc eval`: rate-distortion of sicc (every layer prefix of one encode) against classical codecs.

bpp always comes from real file sizes. For each codec setting the metrics are averaged over the
images (CompressAI's convention), then BD-rates (Bjøntegaard, cubic fit of log-rate against PSNR)
of sicc against each classical codec are computed over the PSNR range both curves cover.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .data import list_images
from .errors import SiccError

CLASSICAL = ("jpeg", "webp", "avif", "j2k", "jxl")
QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
J2K_RATIOS = (400, 200, 120, 80, 50, 30, 20, 12, 8)
JXL_DISTANCES = (12.0, 8.0, 5.0, 3.0, 2.0, 1.5, 1.0, 0.6)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on RGB uint8 images (NaN below the 161-pixel side the 5 scales need)."""
    if min(a.shape[:2]) < 161:
        return float("nan")
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    ta = torch.tensor(a).permute(2, 0, 1)[None].float()
    tb = torch.tensor(b).permute(2, 0, 1)[None].float()
    return float(_ms_ssim(ta, tb, data_range=255.0))


def lpips(a: np.ndarray, b: np.ndarray) -> float:
    import torch

    from .lpips import load_lpips

    ta = torch.tensor(a).permute(2, 0, 1)[None].float() / 255
    tb = torch.tensor(b).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        return float(load_lpips()(ta, tb))


def metrics(ref: np.ndarray, rec: np.ndarray) -> dict:
    return {"psnr": psnr(ref, rec), "ms_ssim": ms_ssim(ref, rec), "lpips": lpips(ref, rec)}


def _pillow_round_trip(img: Image.Image, fmt: str, **kw) -> tuple[int, np.ndarray, float, float]:
    buf = io.BytesIO()
    t0 = time.perf_counter()
    img.save(buf, fmt, **kw)
    t1 = time.perf_counter()
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    t2 = time.perf_counter()
    return len(buf.getvalue()), np.asarray(out.convert("RGB")), t1 - t0, t2 - t1


def _jxl_round_trip(img: Image.Image, distance: float):
    with tempfile.TemporaryDirectory() as d:
        src, enc, dec = Path(d) / "in.png", Path(d) / "out.jxl", Path(d) / "out.png"
        img.save(src)
        t0 = time.perf_counter()
        subprocess.run(["cjxl", str(src), str(enc), "-d", str(distance), "--quiet"], check=True, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run(["djxl", str(enc), str(dec), "--quiet"], check=True, capture_output=True)
        t2 = time.perf_counter()
        return enc.stat().st_size, np.asarray(Image.open(dec).convert("RGB")), t1 - t0, t2 - t1


def classical_settings(codec: str):
    """(label, round-trip function) per rate setting of a classical codec."""
    if codec == "jpeg":
        return [(f"q{q}", lambda im, q=q: _pillow_round_trip(im, "JPEG", quality=q)) for q in QUALITIES]
    if codec == "webp":
        return [(f"q{q}", lambda im, q=q: _pillow_round_trip(im, "WEBP", quality=q, method=6)) for q in QUALITIES]
    if codec == "avif":
        return [(f"q{q}", lambda im, q=q: _pillow_round_trip(im, "AVIF", quality=q, speed=6)) for q in QUALITIES]
    if codec == "j2k":
        return [(f"r{r}", lambda im, r=r: _pillow_round_trip(im, "JPEG2000", quality_mode="rates",
                                                             quality_layers=[r], irreversible=True))
                for r in J2K_RATIOS]
    if codec == "jxl":
        return [(f"d{d}", lambda im, d=d: _jxl_round_trip(im, d)) for d in JXL_DISTANCES]
    raise SiccError(f"unknown codec {codec!r}")


def available(codec: str) -> bool:
    from PIL import features

    return {"jpeg": features.check("jpg"), "webp": features.check("webp"), "avif": features.check("avif"),
            "j2k": features.check("jpg_2000"), "jxl": shutil.which("cjxl") is not None
            and shutil.which("djxl") is not None}.get(codec, True)


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjøntegaard delta rate (%) of `test` against `anchor`, each a list of (bpp, psnr)."""
    if len(anchor) < 4 or len(test) < 4:
        return float("nan")
    ra, pa = np.log([p[0] for p in anchor]), np.array([p[1] for p in anchor])
    rt, pt = np.log([p[0] for p in test]), np.array([p[1] for p in test])
    lo, hi = max(pa.min(), pt.min()), min(pa.max(), pt.max())
    if not hi > lo:
        return float("nan")
    ia = np.polyint(np.polyfit(pa, ra, 3))
    it = np.polyint(np.polyfit(pt, rt, 3))
    diff = ((np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ia, hi) - np.polyval(ia, lo))) / (hi - lo)
    return float((math.exp(diff) - 1) * 100)


def rd_slopes(curve: list[tuple[float, float]]) -> list[float]:
    """The training objective's lambda at each inner point of an RD curve (bpp, PSNR on [0, 1] images):
    -d(bpp) / d(255^2 MSE), from central differences. A loss bpp + lambda * 255^2 * MSE is stationary
    along the curve there, so a term with this lambda asks for a better point, not a slide along it."""
    rate = np.array([p[0] for p in curve])
    distortion = 255**2 * 10 ** (-np.array([p[1] for p in curve]) / 10)
    return list(-(rate[2:] - rate[:-2]) / (distortion[2:] - distortion[:-2]))


def reusable_rows(anchors: Path, images: list[str]) -> list[dict]:
    """The classical-codec rows of an earlier `results.json` for exactly these images, for codecs that
    have a row per setting for every one of them (their results never change, and measuring them again
    costs most of an evaluation while sicc's weights are being trained)."""
    try:
        rows = json.loads(Path(anchors).read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SiccError(f"{anchors}: not a sicc eval results.json ({e})") from None
    wanted = set(images)
    by_codec: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("codec") != "sicc" and r.get("image") in wanted:
            by_codec.setdefault(r["codec"], []).append(r)
    complete = []
    for codec, rs in by_codec.items():
        settings = {r["setting"] for r in rs}
        if {(r["image"], r["setting"]) for r in rs} == {(i, s) for i in wanted for s in settings}:
            complete += rs
    return complete


def evaluate(dataset: Path, out_dir: Path, codecs: list[str], weights: Path | None = None,
             progress: bool = True, limit: int | None = None, anchors: Path | None = None, refine: int = 0) -> dict:
    """`anchors`: an earlier results.json on the same images whose classical-codec rows are reused
    instead of measured again. `refine`: sicc's encoder refinement steps (encode_image)."""
    from rich.progress import Progress

    from . import container
    from .api import decode_image, encode_image, truncate

    paths = list_images(dataset)[:limit]
    if not paths:
        raise SiccError(f"{dataset}: no images")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []  # one per (codec, setting, image)
    if anchors is not None:
        rows = [r for r in reusable_rows(anchors, [p.name for p in paths]) if r["codec"] in codecs]
        codecs = [c for c in codecs if c not in {r["codec"] for r in rows}]
    reused = sorted({r["codec"] for r in rows})
    skipped = [c for c in codecs if not available(c)]
    codecs = [c for c in codecs if c not in skipped]
    with Progress(disable=not progress) as bar:
        task = bar.add_task("evaluating", total=len(paths) * len(codecs))
        for path in paths:
            img = Image.open(path).convert("RGB")
            # Pixels alone: some codecs would carry an ICC profile or EXIF (counting its bytes, or, for
            # djxl, returning pixels in another colour encoding), others drop it; the metrics compare pixels.
            img.info.clear()
            ref = np.asarray(img)
            pixels = img.width * img.height
            for codec in codecs:
                if codec == "sicc":
                    t0 = time.perf_counter()
                    data = encode_image(img, weights=weights, refine=refine)
                    t_enc = time.perf_counter() - t0
                    for k in range(1, len(container.parse(data).header.layers) + 1):
                        part = truncate(data, layers=k)
                        t0 = time.perf_counter()
                        rec = np.asarray(decode_image(part, weights=weights).convert("RGB"))
                        t_dec = time.perf_counter() - t0
                        rows.append(dict(codec="sicc", setting=f"L{k}", image=path.name, bytes=len(part),
                                         bpp=len(part) * 8 / pixels, **metrics(ref, rec), encode_s=t_enc,
                                         decode_s=t_dec))
                else:
                    for label, fn in classical_settings(codec):
                        size, rec, t_enc, t_dec = fn(img)
                        rows.append(dict(codec=codec, setting=label, image=path.name, bytes=size,
                                         bpp=size * 8 / pixels, **metrics(ref, rec), encode_s=t_enc, decode_s=t_dec))
                bar.advance(task)
    curves = average_curves(rows)
    others = [c for c in curves if c != "sicc" and "sicc" in curves]
    both = {c: curve_bd_rates(curves[c], curves["sicc"]) for c in others}
    bd, bd_lpips = ({c: v[0] for c, v in both.items()}, {c: v[1] for c, v in both.items()})
    result = {"dataset": str(dataset), "images": len(paths), "weights": str(weights or "default"), "refine": refine,
              "reused": {"from": str(anchors), "codecs": reused} if reused else None, "skipped": skipped,
              "curves": {c: [dict(zip(CURVE_FIELDS, p)) for p in pts] for c, pts in curves.items()},
              "bd_rate_psnr_vs": bd, "bd_rate_lpips_vs": bd_lpips, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(result, indent=1))
    (out_dir / "results.md").write_text(markdown(result))
    plot(result, out_dir / "rd.png")
    return result


CURVE_FIELDS = ("bpp", "psnr", "ms_ssim", "lpips", "encode_s", "decode_s", "setting")


def curve_bd_rates(anchor: list[tuple], test: list[tuple]) -> tuple[float, float]:
    """BD-rates (%) of `test` against `anchor`, two `average_curves` curves: at equal PSNR and at equal
    LPIPS (the same fit on -LPIPS, which rises with the rate like PSNR)."""
    return (bd_rate([p[:2] for p in anchor], [p[:2] for p in test]),
            bd_rate([(p[0], -p[3]) for p in anchor], [(p[0], -p[3]) for p in test]))


def average_curves(rows: list[dict]) -> dict[str, list[tuple]]:
    """Per codec: CURVE_FIELDS averaged over images, by rising bpp."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["codec"], r["setting"]), []).append(r)
    curves: dict[str, list[tuple]] = {}
    for (codec, setting), rs in by.items():
        mean = lambda key: float(np.mean([r[key] for r in rs]))  # noqa: E731
        curves.setdefault(codec, []).append(tuple(mean(f) for f in CURVE_FIELDS[:-1]) + (setting,))
    return {c: sorted(pts) for c, pts in curves.items()}


def markdown(result: dict) -> str:
    lines = [f"Dataset: `{result['dataset']}` ({result['images']} images), weights: `{result['weights']}`"
             + (f", encoder refinement: {result['refine']} steps" if result.get("refine") else "")]
    if result.get("reused"):
        lines.append(f"Results of {', '.join(result['reused']['codecs'])} reused from `{result['reused']['from']}`.")
    lines.append("")
    if result["bd_rate_psnr_vs"]:
        lines += ["| sicc vs | BD-rate (PSNR) | BD-rate (LPIPS) |", "|---|---|---|"]
        lines += [f"| {c} | {v:+.1f} % | {result['bd_rate_lpips_vs'][c]:+.1f} % |"
                  for c, v in result["bd_rate_psnr_vs"].items()]
        lines.append("")
    lines += ["| codec | setting | bpp | PSNR dB | MS-SSIM | LPIPS | encode s | decode s |",
              "|---|---|---|---|---|---|---|---|"]
    for codec, pts in result["curves"].items():
        for p in pts:
            lines.append(f"| {codec} | {p['setting']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} | "
                         f"{p['lpips']:.4f} | {p['encode_s']:.3f} | {p['decode_s']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for codec, pts in result["curves"].items():
        ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], "o-" if codec == "sicc" else ".-", label=codec,
                linewidth=2.5 if codec == "sicc" else 1)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB, RGB)")
    ax.set_xlim(0, 2.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{Path(result['dataset']).name}: sicc layers of one file vs classical codecs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
