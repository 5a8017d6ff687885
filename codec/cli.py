"""The `sicc` command line (SPEC §1): a thin layer of paths, atomic writes and error reporting over
the library API. Heavy imports (torch) happen inside the commands that need them."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from .errors import SiccError

STDIO = "-"
# mkstemp creates files 0600; outputs get the usual permissions (read once, while single-threaded).
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fail(name: str, reason: str):
    click.echo(f"sicc: error: {name}: {reason}", err=True)


@dataclass
class Job:
    source: str  # a path or "-"
    target: str  # a path or "-"


def write_atomic(target: str, data: bytes, force: bool):
    """Write via a temp file in the target's folder and a rename: never a partial file, never an
    existing file replaced without `force`."""
    if target == STDIO:
        if sys.stdout.isatty():
            raise SiccError("refusing to write binary data to a terminal")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    if path.exists() and not force:
        raise SiccError("output exists (use --force to overwrite)")
    if path.is_dir():
        raise SiccError("output is a directory")
    with _ctrl_c_held():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise SiccError(f"cannot write {target}: {e.strerror or e}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


@contextmanager
def _ctrl_c_held():
    """Ctrl-C waits until the block is done, then interrupts as usual: a KeyboardInterrupt between
    mkstemp and the `try` that removes the temp file (or inside that cleanup) would leave it behind.
    Signals reach only the main thread, so worker threads need no holding."""
    current = signal.getsignal(signal.SIGINT)  # None: a handler not set from Python, left alone
    if threading.current_thread() is not threading.main_thread() or current in (signal.SIG_IGN, None):
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def read_input(source: str) -> bytes:
    if source == STDIO:
        return sys.stdin.buffer.read()
    p = Path(source)
    if p.is_dir():
        raise SiccError("is a directory")
    try:
        return p.read_bytes()
    except OSError as e:
        raise SiccError(e.strerror or str(e)) from None


def plan_jobs(inputs: tuple[str, ...], output: str | None, suffix: str) -> list[Job]:
    """One input: `-o` names the file (default: input stem + suffix, stdout for stdin). Several
    inputs: `-o` is a directory (created if needed; default: beside each input)."""
    if len(inputs) == 1:
        src = inputs[0]
        if output is not None:
            target = output
        elif src == STDIO:
            target = STDIO
        else:
            target = str(Path(src).with_suffix(suffix))
        if output is not None and output != STDIO and Path(output).is_dir():
            target = str(Path(output) / (Path(src).stem + suffix)) if src != STDIO else output
        return [Job(src, target)]
    if STDIO in inputs or output == STDIO:
        raise click.UsageError("'-' (stdin/stdout) works with a single input only")
    if output is not None:
        if Path(output).exists() and not Path(output).is_dir():
            raise click.UsageError(f"with several inputs, -o must be a directory: {output}")
        Path(output).mkdir(parents=True, exist_ok=True)
    return [Job(s, str((Path(output) if output else Path(s).parent) / (Path(s).stem + suffix))) for s in inputs]


# Set on Ctrl-C while worker threads run: long jobs (perceptual sampling) check it and stop.
INTERRUPTED = threading.Event()


def run_jobs(jobs: list[Job], work, workers: int, quiet: bool, debug: bool, label: str, shown=None) -> int:
    """Run `work(job)` for every job (in `workers` threads), report failures one line each, and
    return the exit code: 0 if all succeeded, 1 otherwise. `shown`: a rich Progress already on
    screen to add the file count to (rich shows one live display at a time)."""
    import torch

    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    seen: dict[str, str] = {}
    failures: list[str] = []

    def guarded(job: Job) -> str | None:
        try:
            if job.target != STDIO:
                key = os.path.abspath(job.target)
                if seen.setdefault(key, job.source) != job.source:
                    raise SiccError(f"output {job.target} is also the output of {seen[key]}")
            work(job)
            return None
        except SiccError as e:
            return str(e)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one line per failed file, traceback only with --debug
            if debug:
                traceback.print_exc()
            return f"{type(e).__name__}: {e}"

    show = not quiet and sys.stderr.isatty() and len(jobs) > 1
    from contextlib import nullcontext

    from rich.progress import Progress

    def report(job: Job, err: str | None):
        bar.advance(task)
        if err is not None:
            name = "<stdin>" if job.source == STDIO else job.source
            _fail(name, err)
            failures.append(name)

    with nullcontext(shown) if shown is not None else Progress(disable=not show, transient=True) as bar:
        task = bar.add_task(label, total=len(jobs), visible=show)
        if workers <= 1:
            # in this thread, so Ctrl-C stops the file being worked on at once
            for job in jobs:
                report(job, guarded(job))
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                for job, err in zip(jobs, pool.map(guarded, jobs)):
                    report(job, err)
            except KeyboardInterrupt:
                INTERRUPTED.set()  # files in flight stop at their next check; queued ones never start
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    if failures and len(jobs) > 1:
        click.echo(f"sicc: {len(failures)} of {len(jobs)} inputs failed: {', '.join(failures)}", err=True)
    return 1 if failures else 0


def _rate_options(f):
    f = click.option("--bytes", "nbytes", type=click.IntRange(min=1), help="Largest prefix within N bytes.")(f)
    f = click.option("--bpp", type=click.FloatRange(min=0, min_open=True), help="Largest prefix within X bits per pixel.")(f)
    f = click.option("--layers", type=click.IntRange(min=1), help="Keep layers 1..K.")(f)
    return f


def _one_rate(layers, bpp, nbytes, required=False, target_psnr=None):
    given = sum(v is not None for v in (layers, bpp, nbytes, target_psnr))
    if given > 1:
        names = "--layers, --bpp, --bytes" + (", --psnr" if target_psnr is not None else "")
        raise click.UsageError(f"give at most one of {names}")
    if required and not given:
        raise click.UsageError("give one of --layers, --bpp, --bytes")


_debug_option = click.option("--debug", is_flag=True, help="Show tracebacks.")
_weights_option = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
                               help="Weights file, or the name of a shipped one (sicc-base, sicc-base-lpips). "
                                    "Default: encode with sicc-base; decode with the shipped weights the file records.")

def _device_option(help: str):
    return click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                        help=help)


_refine_option = click.option("--refine", default=0, show_default=True, type=click.IntRange(min=0), metavar="STEPS",
                              help="Optimise the latents for this image for STEPS steps before coding: smaller files "
                                   "at the same quality, much slower encodes (30 is a good choice); decoders are unchanged.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sicc")
def cli():
    """sicc: a learned progressive image codec. Encode once, serve every rate."""
    from .memory import reuse_freed_memory

    reuse_freed_memory()


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file (one input) or directory (several).")
@_rate_options
@click.option("--psnr", "target_psnr", type=click.FloatRange(min=0, min_open=True), metavar="DB",
              help="Smallest prefix whose decode reaches DB PSNR (an error if the whole file does not).")
@_weights_option
@click.option("-j", "--jobs", default=1, type=click.IntRange(min=1), help="Files coded in parallel.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--strip", is_flag=True, help="Drop ICC profile and EXIF.")
@_refine_option
@_device_option("Where the analysis transform and --refine run (auto: CUDA when there is one).")
@_debug_option
def encode(inputs, output, layers, bpp, nbytes, target_psnr, weights, jobs, force, quiet, strip, refine, device, debug):
    """Encode images to .sic files."""
    _one_rate(layers, bpp, nbytes, target_psnr=target_psnr)
    from .api import encode_image
    from .device import resolve_device
    from .weights import load_codec

    plan = plan_jobs(inputs, output, ".sic")
    try:
        device = resolve_device(device)
    except SiccError as e:
        _fail("encode", str(e))
        sys.exit(1)
    try:
        load_codec(weights, device)  # a bad weights file fails once, before any input
    except SiccError as e:
        _fail(str(weights or "default weights"), str(e))
        sys.exit(1)

    def work(job: Job):
        data = encode_image(read_input(job.source), weights=weights, layers=layers, bpp=bpp, nbytes=nbytes,
                            psnr=target_psnr, strip=strip, refine=refine, device=device)
        write_atomic(job.target, data, force)

    sys.exit(run_jobs(plan, work, jobs, quiet, debug, "encoding"))


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image (one input; format from the suffix, PNG by default) or directory.")
@_rate_options
@click.option("--sample", is_flag=True, help="Synonymous decode: fill missing layers with a random valid latent.")
@click.option("--seed", type=int, default=None, help="Seed for --sample / --perceptual (default 0).")
@click.option("--perceptual", is_flag=True, help="Diffusion-based idempotent inversion: realistic detail, same bits.")
@click.option("--strength", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="With --perceptual: where sampling starts, 0 = plain decode, 1 = pure noise.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1), help="With --perceptual: sampler steps.")
@click.option("--guidance", default="project", show_default=True, type=click.Choice(["project", "dps"]),
              help="With --perceptual: hold samples to the layers by back-projection (fast) or DPS gradients.")
@_device_option("With --perceptual: where to run (auto: CUDA when present).")
@click.option("--prior-weights", type=click.Path(dir_okay=False, path_type=Path), help="Diffusion prior weights.")
@_weights_option
@click.option("--allow-partial", is_flag=True, help="Decode the intact layers of a cut or damaged file.")
@click.option("-j", "--jobs", default=1, type=click.IntRange(min=1), help="Files decoded in parallel.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@_debug_option
def decode(inputs, output, layers, bpp, nbytes, sample, seed, perceptual, strength, steps, guidance, device,
           prior_weights, weights, allow_partial, jobs, force, quiet, debug):
    """Decode .sic files to images."""
    _one_rate(layers, bpp, nbytes)
    if seed is not None and not (sample or perceptual):
        raise click.UsageError("--seed needs --sample or --perceptual")
    from .api import decode_image
    from .imageio import image_bytes, output_format

    plan = plan_jobs(inputs, output, ".png")

    def work(job: Job):
        name = "<stdin>" if job.source == STDIO else job.source
        img = decode_image(read_input(job.source), weights=weights, layers=layers, bpp=bpp, nbytes=nbytes,
                           allow_partial=allow_partial, sample=sample, seed=seed, perceptual=perceptual,
                           strength=strength, steps=steps, guidance=guidance, device=device,
                           prior_weights=prior_weights, on_step=progress.for_image(name) if perceptual else None)
        write_atomic(job.target, image_bytes(img, output_format(None if job.target == STDIO else job.target)), force)

    with _SamplerProgress(quiet) as progress:
        code = run_jobs(plan, work, jobs, quiet, debug, "decoding", progress.bar)
    sys.exit(code)


class _SamplerProgress:
    """Perceptual decoding is slow on a CPU: a progress bar with ETA per image on a terminal, else one
    line after the second sampler step saying how long the image will take."""

    def __init__(self, quiet: bool):
        from rich.console import Console
        from rich.progress import Progress

        self.quiet = quiet
        self.bar = Progress(console=Console(stderr=True), disable=quiet or not sys.stderr.isatty(), transient=True)
        self.lock = threading.Lock()

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def for_image(self, name: str):
        import time

        task, started = None, 0.0

        def on_step(done: int, total: int):
            nonlocal task, started
            if INTERRUPTED.is_set():
                raise KeyboardInterrupt
            with self.lock:
                if task is None:
                    task = self.bar.add_task(f"perceptual {name}", total=total)
                    started = time.perf_counter()
                self.bar.update(task, completed=done)
                if done == 2 and self.bar.disable and not self.quiet:
                    left = (time.perf_counter() - started) * (total - done) / (done - 1)
                    click.echo(f"sicc: {name}: perceptual decoding needs about {left:.0f} s more here "
                               f"({total} sampler steps; a CUDA device is much faster)", err=True)
                if done == total:
                    self.bar.remove_task(task)

        return on_step


@cli.command()
@click.argument("input")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def info(input, as_json):
    """Describe a .sic file: size, layers, rate per prefix, weights."""
    from .container import describe

    try:
        d = describe(read_input(input))
    except SiccError as e:
        _fail(input, str(e))
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(d))
        return
    click.echo(f"{input}: {d['width']}x{d['height']} {d['mode']}, {d['file_bytes']} bytes, {d['bpp']} bpp, "
               f"{d['layers_present']} of {d['layers_total']} layers, weights {d['weights']}")
    for row in d["layers"]:
        flag = "" if row["intact"] else "  (damaged or missing)"
        click.echo(f"  layer {row['index']:>2}: {row['bytes']:>9} bytes  prefix {row['cumulative_bytes']:>9} bytes"
                   f"  {row['bpp']:.4f} bpp{flag}")
    if d["problem"]:
        click.echo(f"  problem: {d['problem']}")


@cli.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="Output .sic file ('-' for stdout).")
@_rate_options
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
def truncate(input, output, layers, bpp, nbytes, force):
    """Keep a prefix of layers: a valid smaller .sic, without re-encoding."""
    _one_rate(layers, bpp, nbytes, required=True)
    from .api import truncate as truncate_bytes

    try:
        write_atomic(output, truncate_bytes(read_input(input), layers=layers, bpp=bpp, nbytes=nbytes), force)
    except SiccError as e:
        _fail(input, str(e))
        sys.exit(1)


@cli.command("eval")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", default="eval-out", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--codecs", default="sicc,jpeg,webp,avif,jxl,j2k", show_default=True,
              help="Comma-separated: sicc, jpeg, webp, avif, jxl (needs cjxl/djxl), j2k.")
@_weights_option
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images.")
@click.option("--anchors", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier results.json on the same images: reuse its classical-codec results.")
@_refine_option
@click.option("-q", "--quiet", is_flag=True)
def eval_cmd(dataset_dir, out_dir, codecs, weights, limit, anchors, refine, quiet):
    """Rate-distortion of every sicc layer prefix against classical codecs: JSON, table, plot, BD-rates."""
    from .evaluate import CLASSICAL, evaluate

    chosen = [c.strip() for c in codecs.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in ("sicc", *CLASSICAL)]
    if unknown:
        raise click.UsageError(f"unknown codec(s): {', '.join(unknown)}")
    try:
        result = evaluate(dataset_dir, out_dir, chosen, weights, progress=not quiet and sys.stderr.isatty(), limit=limit,
                          anchors=anchors, refine=refine)
    except SiccError as e:
        _fail(str(dataset_dir), str(e))
        sys.exit(1)
    for c in result["skipped"]:
        click.echo(f"sicc: {c} is not available here, skipped", err=True)
    for c, v in result["bd_rate_psnr_vs"].items():
        click.echo(f"BD-rate (PSNR) of sicc vs {c}: {v:+.1f} %")
    click.echo(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}, {out_dir / 'rd.png'}")


@cli.group()
def train():
    """Train the weights sicc ships."""


def _training_options(batch_size: int, patch_size: int, lr: float, model_name: str):
    """The options both trainers share; defaults differ per model."""

    def decorate(f):
        for option in reversed([
            click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)),
            click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path)),
            click.option("--steps", default=100_000, show_default=True, type=click.IntRange(min=1)),
            click.option("--batch-size", default=batch_size, show_default=True, type=click.IntRange(min=1)),
            click.option("--patch-size", default=patch_size, show_default=True, type=click.IntRange(min=16)),
            click.option("--lr", default=lr, show_default=True, type=float),
            click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help=f"checkpoint.pt (full state) or a {model_name} .safetensors (model only)."),
            click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch."),
            click.option("--max-minutes", type=float, help="Stop after this long (the last 15 % at lr/10)."),
            click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
                         help="bf16: the big convolutions under bf16 autocast (about 2x faster on CPUs with "
                              "AMX/AVX512-BF16, and on recent GPUs)."),
            click.option("--seed", default=0, show_default=True, type=int),
            click.option("--small", is_flag=True, help=f"A tiny {model_name}, for tests and smoke runs."),
            click.option("-q", "--quiet", is_flag=True),
        ]):
            f = option(f)
        return f

    return decorate


@contextmanager
def _training_errors():
    try:
        yield
    except SiccError as e:  # its message names the file at fault, if one is (data, --resume)
        _fail("train", str(e))
        sys.exit(1)


def _run_training(trainer, data_dir: Path, quiet: bool, **kwargs) -> Path:
    with _training_errors():
        if kwargs["precision"] == "bf16":
            from .device import has_fast_bf16, resolve_device

            if not has_fast_bf16(resolve_device(kwargs.get("device", "auto"))):
                click.echo("sicc: warning: no native bf16 here (CPU without AVX512-BF16/AMX): --precision bf16 "
                           "is emulated and far slower than fp32", err=True)
        return trainer(data_dir, progress=not quiet and sys.stderr.isatty(), **kwargs)


def _lambda_ramp(ctx, param, value):
    """LOW,HIGH -> (low, high), two positive finite floats in order; None (not given) stays None."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("takes two numbers, LOW,HIGH, e.g. 0.0004,0.08") from None
    if not 0 < low < high < math.inf:
        raise click.BadParameter("needs 0 < LOW < HIGH, both finite")
    return low, high


@train.command("codec")
@_training_options(batch_size=8, patch_size=128, lr=3e-4, model_name="codec")
@click.option("--reg-alpha", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of the conditional-source-entropy regularizer (0 disables; the paper uses 0.1).")
@click.option("--lpips-weight", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Add LPIPS with SIC's per-level gamma times this (0: MSE only; for the -lpips weights, "
                   "fine-tuned from MSE weights).")
@click.option("--full-weight", default=0.5, show_default=True, type=click.FloatRange(min=0, max=1),
              help="Share of each step's loss given to the full file; the rest goes to the step's level "
                   "(SIC: 0.5; lower favours the truncated layers).")
@click.option("--z-rate-weight", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Multiplies the hyperlatent's bits in the loss (above 1: a cheaper layer 1, which is z alone).")
@click.option("--slices", help="Latent channels per slice (one layer each), e.g. 24,24,24,24,24,24,24,24; "
                                "with --resume FILE.safetensors the transforms come from the file and the slice "
                                "networks start fresh.  [default: the shipped layout]")
@click.option("--layering", type=click.Choice(["slices", "planes"]),
              help="How files cut the latent into layers: slices (one layer per slice) or planes (trit planes "
                   "of one slice whose mean and scale come from z). A change starts the new entropy model "
                   "fresh on the --resume file's transforms.  [default: the --resume file's]")
@click.option("--synthesis-blocks", type=click.IntRange(min=0),
              help="Residual blocks in the synthesis transform at 1/8 and 1/4 of the image's size. With "
                   "--resume FILE.safetensors new blocks start as the identity, so training goes on from the "
                   "file's decoder.  [default: the --resume file's, else 0]")
@click.option("--freeze-transforms", "frozen_transforms", is_flag=True,
              help="Train only the entropy model (hyperprior, slice networks), not the analysis and "
                   "synthesis transforms.")
@click.option("--ema", default=0.0, show_default=True, type=click.FloatRange(min=0, max=1, max_open=True),
              help="Export an exponential moving average of the weights with this decay per step, e.g. 0.999 "
                   "(0: the weights themselves).")
@click.option("--plane-levels", is_flag=True,
              help="Plane-layered weights: each step's level term is a file of z and k plane layers (k in "
                   "turn over 0..L-1) with its own bits, instead of z alone.")
@click.option("--plane-lambdas", callback=_lambda_ramp, metavar="LOW,HIGH",
              help="With --plane-levels: the ends of the geometric lambda ramp over the plane levels "
                   "(level 0 and the full file keep 0.0018 and 0.18).  [default: 0.0004,0.08]")
@_device_option("auto: CUDA when there is one. Under torchrun every rank trains (one GPU per rank).")
def train_codec_cmd(data_dir, small, quiet, slices, layering, synthesis_blocks, **kwargs):
    """Train the progressive codec on random crops of the images under DATA_DIR."""
    import dataclasses

    from .model import TINY_CONFIG, ModelConfig
    from .train import train_codec

    if kwargs["patch_size"] % 64:
        raise click.UsageError("--patch-size must be a multiple of 64")
    cfg = TINY_CONFIG if small else None
    if slices:
        try:
            sizes = tuple(int(s) for s in slices.split(","))
        except ValueError:
            raise click.UsageError("--slices takes comma-separated channel counts, e.g. 24,24,24") from None
        if not sizes or min(sizes) < 1:
            raise click.UsageError("--slices takes positive channel counts")
        cfg = dataclasses.replace(cfg or ModelConfig(), slices=sizes, M=sum(sizes))
    if layering or synthesis_blocks is not None:
        # A change to one part of the layout keeps the rest of the --resume file's.
        from .train import checkpoint_config, plane_layout
        from .weights import read_config

        resume = kwargs["resume"]
        if cfg is None and resume is not None:
            # a checkpoint.pt given the count it already has resumes as it is; model_to_train refuses a change
            with _training_errors():
                cfg = (checkpoint_config if resume.suffix == ".pt" else read_config)(resume)
        cfg = cfg or ModelConfig()
    if layering:
        if slices and layering == "planes":
            raise click.UsageError("--slices and --layering planes exclude each other (planes code one slice)")
        if layering != cfg.layering:
            cfg = plane_layout(cfg) if layering == "planes" else dataclasses.replace(cfg, layering="slices")
    if synthesis_blocks is not None:
        cfg = dataclasses.replace(cfg, synthesis_blocks=synthesis_blocks)
    path = _run_training(train_codec, data_dir, quiet, cfg=cfg, **kwargs)
    click.echo(f"weights: {path}")


@train.command("prior")
@_training_options(batch_size=16, patch_size=64, lr=2e-4, model_name="UNet")
def train_prior_cmd(data_dir, small, quiet, **kwargs):
    """Train the diffusion prior for --perceptual on random crops of the images under DATA_DIR."""
    from .diffusion import TINY_UNET
    from .train import train_prior

    path = _run_training(train_prior, data_dir, quiet, cfg=TINY_UNET if small else None, **kwargs)
    click.echo(f"prior weights: {path}")


def main():
    # not click's standalone mode: it turns Ctrl-C into "Aborted!" and exit code 1
    try:
        code = cli.main(prog_name="sicc", standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("sicc: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
