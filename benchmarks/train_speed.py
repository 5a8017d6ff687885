"""Seconds per training step of `sicc train codec`'s recipe, per precision, and optionally where the
time goes (torch.profiler's top operators). Choose `--precision` for a machine with it: bf16 autocast
pays on CPUs with native bf16 (AVX512-BF16 or AMX: codec.device.has_fast_bf16) and costs elsewhere.

    python benchmarks/train_speed.py weights/sicc-base-lpips.safetensors --lpips-weight 4 \
        --precisions fp32,bf16 --threads 1 --steps 20 [--profile]

The step is `codec.train.codec_update`, the one `train_codec` runs (without the regularizer), on crops
of the first 64 images of ../shared/data/train, one level per step round-robin. Other processes on
the machine slow it: compare precisions in one call.
"""

import argparse
import contextlib
import time
from pathlib import Path

import torch

from codec.data import CropSampler
from codec.device import has_fast_bf16
from codec.model import TINY_CONFIG, level_gammas, level_lambdas
from codec.train import PRECISIONS, codec_update, model_to_train, split_parameters


def seconds_per_step(args, precision: str, sampler: CropSampler, lpips) -> float:
    """A fresh model per precision, so each starts from the same weights."""
    torch.manual_seed(0)
    model, _ = model_to_train(args.weights, TINY_CONFIG if args.small else None)
    model.transform_dtype = PRECISIONS[precision]
    model.to(memory_format=torch.channels_last)
    main, aux = split_parameters(model)
    opt, aux_opt = torch.optim.Adam(main, lr=1e-5), torch.optim.Adam(aux, lr=1e-3)
    S = len(model.cfg.slices)
    objective = dict(lambdas=level_lambdas(S), lpips=lpips, gammas=level_gammas(S, args.lpips_weight))

    def step(i: int):
        x = sampler.batch(args.batch_size).contiguous(memory_format=torch.channels_last)
        codec_update(model, x, i % S, opt, aux_opt, objective)

    for i in range(2):  # first steps allocate and pick kernels
        step(i)
    with torch.profiler.profile() if args.profile else contextlib.nullcontext() as prof:
        start = time.perf_counter()
        for i in range(args.steps):
            step(i)
        seconds = (time.perf_counter() - start) / args.steps
    if args.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return seconds  # under --profile, with the profiler's overhead


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, nargs="?", help="a codec .safetensors to start from (else new)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lpips-weight", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--small", action="store_true", help="the tiny test codec")
    p.add_argument("--profile", action="store_true", help="also print the top operators")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {has_fast_bf16(torch.device('cpu'))}; {args.threads} thread(s), "
          f"batch {args.batch_size} of {args.patch_size}², lpips weight {args.lpips_weight}")
    sampler = CropSampler(args.data, args.patch_size, seed=0, limit=64)  # loading all 1 432 takes minutes
    lpips = None
    if args.lpips_weight > 0:
        from codec.lpips import load_lpips
        lpips = load_lpips()
    for precision in args.precisions.split(","):
        print(f"{precision}: {seconds_per_step(args, precision, sampler, lpips):.3f} s per step")


if __name__ == "__main__":
    main()
