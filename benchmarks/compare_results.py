"""BD-rates of one set of sicc rows against another, from `sicc eval` results.json files.

    python benchmarks/compare_results.py BASE.json[,BASE2.json] TEST.json[,TEST2.json] [ANCHORS.json]

Rows of several files (e.g. the halves of a dataset evaluated on two cores) are merged; only the images
that both BASE and TEST have count. Prints the mean per-layer bpp / PSNR / LPIPS of both, the BD-rate of
TEST against BASE at equal PSNR and at equal LPIPS (over all layers and over layers 2..L), and, given an
ANCHORS results.json, the BD-rates of both against each classical codec on the same images (over all
layers, then over layers 2..L: PSNR / LPIPS).
"""

from __future__ import annotations

import json
import sys

from codec.evaluate import average_curves, curve_bd_rates

ANCHORS = ("jpeg", "webp", "avif", "jxl", "j2k")


def rows(spec: str) -> list[dict]:
    out = []
    for path in spec.split(","):
        with open(path) as f:
            out += json.load(f)["rows"]
    return out


def main(base_spec: str, test_spec: str, anchors_path: str | None = None):
    base, test = rows(base_spec), rows(test_spec)
    images = {r["image"] for r in test if r["codec"] == "sicc"} & {r["image"] for r in base if r["codec"] == "sicc"}
    print(len(images), "images")
    cb = average_curves([r for r in base if r["codec"] == "sicc" and r["image"] in images])["sicc"]
    ct = average_curves([r for r in test if r["codec"] == "sicc" and r["image"] in images])["sicc"]
    for a, b in zip(cb, ct):
        print(f"{a[6]}: {a[0]:.4f}/{a[1]:.2f}/{a[3]:.4f} -> {b[0]:.4f}/{b[1]:.2f}/{b[3]:.4f}  "
              f"encode {a[4]:.2f} -> {b[4]:.2f} s")
    for label, first in (("all layers", 0), ("layers 2+", 1)):
        psnr, lpips = curve_bd_rates(cb[first:], ct[first:])
        print(f"test vs base, {label}: PSNR {psnr:+.1f} %  LPIPS {lpips:+.1f} %")
    if anchors_path:
        anchors = rows(anchors_path)
        for codec in ANCHORS:
            ca = average_curves([r for r in anchors if r["codec"] == codec and r["image"] in images])[codec]
            (bp, bl), (tp, tl) = curve_bd_rates(ca, cb), curve_bd_rates(ca, ct)
            (bp2, bl2), (tp2, tl2) = curve_bd_rates(ca, cb[1:]), curve_bd_rates(ca, ct[1:])
            print(f"vs {codec}: base PSNR {bp:+.1f} % LPIPS {bl:+.1f} %  |  test PSNR {tp:+.1f} % LPIPS {tl:+.1f} %"
                  f"  |  layers 2+: base {bp2:+.1f} / {bl2:+.1f} %, test {tp2:+.1f} / {tl2:+.1f} %")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    main(*sys.argv[1:])
