"""Plot a training log (log.jsonl of `sicc train codec`): running means of PSNR and bpp, full and level.

    python benchmarks/plot_training.py runs/base/log.jsonl docs/training-base.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def running_mean(v, n=10):
    v = np.asarray(v, float)
    return np.convolve(v, np.ones(n) / n, mode="valid") if len(v) >= n else v


def main(log_path, out_path):
    recs = [json.loads(l) for l in open(log_path)]
    steps = [r["step"] for r in recs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("psnr_full", "all layers"), ("psnr_level", "random level")):
        y = running_mean([r[key] for r in recs])
        a.plot(steps[len(steps) - len(y):], y, label=label)
    for key, label in (("bpp_full", "all layers"), ("bpp_level", "random level")):
        y = running_mean([r[key] for r in recs])
        b.plot(steps[len(steps) - len(y):], y, label=label)
    a.set(xlabel="step", ylabel="PSNR dB (training crops)", title="distortion")
    b.set(xlabel="step", ylabel="bpp (estimated, training crops)", title="rate")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    print(out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
