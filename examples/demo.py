"""Encode one image once, then decode every prefix of its layers: bytes, bpp and PSNR per layer count.

    python examples/demo.py [IMAGE] [--weights FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from codec import container
from codec.api import decode_image, encode_image, truncate
from codec.evaluate import psnr

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", nargs="?", default=str(HERE / "sample.png"))
    ap.add_argument("--weights", type=Path, default=None)
    args = ap.parse_args(argv)
    src = Image.open(args.image).convert("RGB")
    ref = np.asarray(src)
    t0 = time.perf_counter()
    data = encode_image(src, weights=args.weights)
    t_enc = time.perf_counter() - t0
    h = container.parse(data).header
    print(f"{args.image}: {h.width}x{h.height}, {len(data)} bytes for all {len(h.layers)} layers, "
          f"encoded in {t_enc:.2f} s")
    print(f"{'layers':>6} {'bytes':>8} {'bpp':>7} {'PSNR dB':>8}")
    for k in range(1, len(h.layers) + 1):
        part = truncate(data, layers=k)
        out = np.asarray(decode_image(part, weights=args.weights).convert("RGB"))
        print(f"{k:>6} {len(part):>8} {len(part) * 8 / (h.width * h.height):>7.3f} {psnr(ref, out):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
