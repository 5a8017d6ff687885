"""BD-rates of one set of sicc rows against another, from `sicc eval` results.json files.

    python benchmarks/compare_results.py BASE.json[,BASE2.json] TEST.json[,TEST2.json] [ANCHORS.json]

Rows of several files (e.g. the halves of a dataset evaluated on two cores) are merged; only the images
that both BASE and TEST have count. Prints the mean per-layer bpp / PSNR / LPIPS of both, the BD-rate of
TEST against BASE at equal PSNR and at equal LPIPS (over all layers and over layers 2..L), and, given an
ANCHORS results.json, the BD-rates of both against each classical codec on the same images.
"""

from __future__ import annotations

import json
import sys

from codec.evaluate import average_curves, bd_rate

ANCHORS = ("jpeg", "webp", "avif", "jxl", "j2k")


def rows(spec: str) -> list[dict]:
    return [row for path in spec.split(",") for row in json.load(open(path))["rows"]]


def _psnr(curve):
    return [(p[0], p[1]) for p in curve]


def _lpips(curve):  # BD-rate wants a quality that rises with the rate
    return [(p[0], -p[3]) for p in curve]


def main(base_spec: str, test_spec: str, anchors_path: str | None = None):
    base, test = rows(base_spec), rows(test_spec)
    images = {r["image"] for r in test if r["codec"] == "sicc"} & {r["image"] for r in base if r["codec"] == "sicc"}
    print(len(images), "images")
    cb = average_curves([r for r in base if r["codec"] == "sicc" and r["image"] in images])["sicc"]
    ct = average_curves([r for r in test if r["codec"] == "sicc" and r["image"] in images])["sicc"]
    for a, b in zip(cb, ct):
        print(f"{a[6]}: {a[0]:.4f}/{a[1]:.2f}/{a[3]:.4f} -> {b[0]:.4f}/{b[1]:.2f}/{b[3]:.4f}  "
              f"encode {a[4]:.2f} -> {b[4]:.2f} s")
    print(f"test vs base, all layers: PSNR {bd_rate(_psnr(cb), _psnr(ct)):+.1f} %  "
          f"LPIPS {bd_rate(_lpips(cb), _lpips(ct)):+.1f} %")
    print(f"test vs base, layers 2+: PSNR {bd_rate(_psnr(cb[1:]), _psnr(ct[1:])):+.1f} %  "
          f"LPIPS {bd_rate(_lpips(cb[1:]), _lpips(ct[1:])):+.1f} %")
    if anchors_path:
        anchors = rows(anchors_path)
        for codec in ANCHORS:
            ca = average_curves([r for r in anchors if r["codec"] == codec and r["image"] in images])[codec]
            print(f"vs {codec}: base PSNR {bd_rate(_psnr(ca), _psnr(cb)):+.1f} % LPIPS {bd_rate(_lpips(ca), _lpips(cb)):+.1f} %"
                  f"  |  test PSNR {bd_rate(_psnr(ca), _psnr(ct)):+.1f} % LPIPS {bd_rate(_lpips(ca), _lpips(ct)):+.1f} %")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    main(*sys.argv[1:])
