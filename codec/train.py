"""`sicc train codec`: the progressive rate-distortion objective of SIC (SPEC §3) on random crops.

Each step picks a level k round-robin (slices transmitted, 0..S-1) and minimises
    0.5 * [R_all + lam_S * 255^2 * MSE(x, x_full)] + 0.5 * [R_<=k + lam_k * 255^2 * MSE(x, x_k)]
where x_k fills the missing slices with their predicted means, exactly as the plain decoder does, and
lam_k runs geometrically over CompressAI's q1..q8 range. Rates are in bits per pixel.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch

from .data import CropSampler
from .device import resolve_device
from .errors import SiccError
from .latent import PLANE_CUTS
from .model import ModelConfig, ProgressiveCodec, bits, level_gammas, level_lambdas, reset_constant_buffers
from .plane_fills import PlaneFills
from .planes import PlaneModel, plane_schedule
from .refine import plane_layer_points
from .regularizer import ConditionalSourceModel


def _atomic_torch_save(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _checkpoint_on_interrupt:
    """Ctrl-C (or SIGTERM turned into KeyboardInterrupt) saves a checkpoint before leaving."""

    def __init__(self, save):
        self.save = save

    def __enter__(self):
        import signal

        self.previous = signal.signal(signal.SIGTERM, signal.default_int_handler)

    def __exit__(self, exc_type, exc, tb):
        import signal

        signal.signal(signal.SIGTERM, self.previous)
        if exc_type is KeyboardInterrupt:
            self.save()
        return False


# Every tensor a collective sends, one per (size, dtype, device), held until the interpreter exits. gloo's
# worker thread can drop its last reference to a finished collective's tensor after Python has moved on
# (a barrier holds weak references to the works before it, so a finished all_reduce's work, and with it
# its tensor, is destroyed only when the barrier's work is). If Python had already let go of the tensor,
# that drop has to take the GIL; during interpreter exit it cannot, and the thread's forced exit ends the
# process in std::terminate (a core of rank 1: ~AsyncBarrierWork -> ~AsyncAllreduceWork ->
# decref_pyobject -> take_gil -> pthread_exit).
# The threads outlive destroy_process_group here: creating a torch.optim optimizer imports torch._dynamo,
# whose torch.distributed._shard keeps the default group alive. A tensor Python still holds is never
# freed by the worker, so the worker needs no GIL.
_COLLECTIVE_BUFFERS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def collective_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The process's one flat buffer of this size, dtype and device for collectives (see above)."""
    key = (numel, dtype, torch.device(device))
    if key not in _COLLECTIVE_BUFFERS:
        _COLLECTIVE_BUFFERS[key] = torch.empty(numel, dtype=dtype, device=device)
    return _COLLECTIVE_BUFFERS[key]


class Distributed:
    """torchrun support (WORLD_SIZE/RANK/LOCAL_RANK from the environment; one process = one world of 1).

    Gradients are averaged by hand instead of through the DDP wrapper: the progressive loss leaves other
    slice networks unused at every level and the aux loss has its own backward, both of which DDP's
    reducer refuses. Rank 0 alone logs and checkpoints; its clock decides when every rank stops.
    Collectives send `collective_buffer`s or the model's own tensors, never a temporary."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        cuda = resolve_device(device).type == "cuda"
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")

    @classmethod
    def alone(cls) -> "Distributed":
        """One CPU process, whatever the environment says (the trainers torchrun does not support)."""
        d = cls.__new__(cls)
        d.world, d.rank, d.device = 1, 0, torch.device("cpu")
        return d

    @property
    def main(self) -> bool:
        return self.rank == 0

    def same_start(self, module: torch.nn.Module):
        """Every rank starts from rank 0's parameters and buffers."""
        if self.world > 1:
            for t in module.state_dict().values():
                torch.distributed.broadcast(t, 0)

    def average_gradients(self, params: list[torch.nn.Parameter]):
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = collective_buffer(sum(g.numel() for g in grads), grads[0].dtype, grads[0].device)
        torch.cat([g.reshape(-1) for g in grads], out=flat)
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view(p.shape).clone()  # the buffer is reused
            offset += p.numel()

    def close(self):
        """Every rank waits for the others to finish (rank 0 writes the last checkpoint) before the
        process group is torn down: a rank leaving with the group still up can abort its peer's exit."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def rank0_value(self, value: float) -> float:
        if self.world == 1:
            return value
        t = collective_buffer(1, torch.float64, self.device)
        t.fill_(value)
        torch.distributed.broadcast(t, 0)
        return float(t.item())


def split_parameters(model: ProgressiveCodec):
    """The trainable parameters: the main optimiser's and the bottleneck quantiles (aux loss)."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (aux if name.endswith("quantiles") else main).append(p)
    return main, aux


def plane_layout(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with plane layering: one slice of all M channels, its mean and scale from z alone, from a
    wider network than a slice's (it predicts every channel with no slice before it to lean on)."""
    return dataclasses.replace(cfg, slices=(cfg.M,), layering="planes",
                               slice_hidden=(cfg.hyper * 3 // 2, cfg.M * 4 // 3))


def freeze_transforms(model: ProgressiveCodec) -> ProgressiveCodec:
    """Train only the entropy model (hyper-analysis and -synthesis, slice networks, bottleneck): the
    analysis and synthesis transforms, and so the latents, stay as they are."""
    for net in (model.g_a, model.g_s):
        net.requires_grad_(False)
    return model


def progressive_loss(model: ProgressiveCodec, x: torch.Tensor, level: int, lambdas: list[float],
                     lpips=None, gammas: list[float] | None = None, full_weight: float = 0.5,
                     z_rate_weight: float = 1.0, fills=None) -> dict:
    """full_weight * (full-file term) + (1 - full_weight) * (this step's level term); SIC uses 0.5.
    With `lpips` (an LPIPS module) each term also gets gamma * LPIPS of its reconstruction.
    `z_rate_weight` scales the hyperlatent's bits in the loss (the logged bpp stay true): layer 1 is
    z alone, and LPIPS's large gamma at level 0 pulls bits into z (session 14: twice session 13's).
    `lambdas` run over the levels, the last one the full file's. With `fills` (plane_fills.PlaneFills,
    plane layering) a level k >= 1 is a file of z and k plane layers: the plain decoder's image
    (straight through to y) and those layers' estimated bits (`refine.plane_layer_points`)."""
    plane_level = fills is not None and level > 0
    out = model(x, None if plane_level else level)
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    z_bits = bits(out["likelihoods"]["z"])
    y_bits = [bits(l) for l in out["likelihoods"]["y"]]
    rate_full = (z_bits + sum(y_bits)) / pixels
    if plane_level:
        [(rate_level, out["x_level"])] = plane_layer_points(model, fills, x, out["y"], None, [level],
                                                            held_hyper=(out["hyper"], z_bits))
    else:
        rate_level = (z_bits + sum(y_bits[:level])) / pixels
    z_surcharge = (z_rate_weight - 1.0) * z_bits / pixels  # in both terms, whose weights sum to 1
    mse_full = torch.mean((out["x_full"] - x) ** 2)
    mse_level = torch.mean((out["x_level"] - x) ** 2)
    w_full, w_level = full_weight, 1.0 - full_weight
    loss = (w_full * (rate_full + lambdas[-1] * 255**2 * mse_full)
            + w_level * (rate_level + lambdas[level] * 255**2 * mse_level)) + z_surcharge
    terms = {"bpp_full": rate_full, "mse_full": mse_full, "bpp_level": rate_level, "mse_level": mse_level,
             "x_full": out["x_full"]}
    if lpips is not None:
        # On the images the decoder delivers (clamped to [0, 1]): unclamped, LPIPS can reward pixels far
        # outside the range (a session-4 fine-tune's low levels overshot to -2.9..4.0 on full-size
        # images; docs/training.md). Out-of-range pixels get only the MSE's gradient.
        terms["lpips_full"] = lpips(x, out["x_full"].clamp(0, 1)).mean()
        terms["lpips_level"] = lpips(x, out["x_level"].clamp(0, 1)).mean()
        loss = loss + w_full * gammas[-1] * terms["lpips_full"] + w_level * gammas[level] * terms["lpips_level"]
    return {"loss": loss, **terms}


PLANE_LAMBDA_RAMP = (0.0004, 0.08)


def plane_level_lambdas(levels: int, ramp: tuple[float, float] | None = None) -> list[float]:
    """lambda per level for plane-level training (`progressive_loss` with `fills`): level 0 (z alone)
    and the full file keep the slice objective's q1 and q8 (0.0018, 0.18); level k in between gets
    a geometric ramp over the levels between `ramp`'s two ends (None: PLANE_LAMBDA_RAMP), within
    0.5-2x of the slope of the default's own curve at that layer (`evaluate.rd_slopes`, printed by
    benchmarks/float_curves.py; six Kodak images, session 24's default: 0.00031, 0.00095, 0.0033, 0.006,
    0.019, 0.052 at 1, 2, 4, 6, 8, 10 plane layers, where the ramp gives 0.00062, 0.00097, 0.0023,
    0.0057, 0.014, 0.033). The slopes hardly move under this ramp, and a ramp fitted to them (session
    27: 0.0003 to 0.17) slid every layer count up in rate, 1-9 % more bits for up to 0.5 dB, on about the
    same curve (Kodak BD-rate +0.3 % against this one): the ramp sets where the layers sit more than how
    good the curve is."""
    low, high = ramp or PLANE_LAMBDA_RAMP
    slope = level_lambdas(levels, low=low, high=high)
    q1, q8 = level_lambdas(1)
    return [q1, *slope[1:levels], q8]


def plane_fills() -> PlaneFills:
    """The plain decoder of the plane layering `export_weights` writes (its Gaussian tables and
    latent.PLANE_CUTS) as tensors: what training's plane levels decode."""
    from .weights import gaussian_tables  # as train_codec imports export_weights: on use

    gaussian, bounds = gaussian_tables()
    planes = PlaneModel(gaussian)
    return PlaneFills(planes, plane_schedule(planes, PLANE_CUTS), bounds)


def psnr(mse: float) -> float:
    return -10 * math.log10(max(mse, 1e-12))


def finite_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], clip: float | None = None) -> bool:
    """`opt.step()` unless a gradient is NaN/inf (one bad batch must not poison the weights and every
    checkpoint after: session 4 lost a run that way); returns whether it stepped. Gradients are
    clipped to norm `clip` first when given (an infinite bound only measures). Under torchrun the
    gradients are already averaged, so every rank skips the same steps."""
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def codec_update(model: ProgressiveCodec, x: torch.Tensor, level: int, opt: torch.optim.Optimizer,
                 aux_opt: torch.optim.Optimizer, objective: dict, dist: Distributed | None = None,
                 regularizer=None, reg_alpha: float = 0.0) -> dict:
    """One training step of the codec on crops `x`: `progressive_loss(model, x, level, **objective)`,
    less `reg_alpha` * regularizer(x, x̂) when one is given (it fits its own model first), a clipped
    Adam step of `opt` (skipped on a non-finite gradient), then the bottleneck quantiles' aux step with
    `aux_opt`. Returns the floats to log. Under torchrun `dist` averages the gradients."""
    dist = dist or Distributed.alone()
    main, aux = ([p for g in o.param_groups for p in g["params"]] for o in (opt, aux_opt))
    terms = progressive_loss(model, x, level, **objective)
    loss, record = terms["loss"], {}
    if regularizer is not None:
        h_cond = regularizer(x, terms["x_full"])
        loss = loss - reg_alpha * h_cond
        record["h_cond"] = h_cond.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_gradients(main)
    skipped = not finite_step(opt, main, clip=1.0)
    aux_loss = model.aux_loss()
    aux_opt.zero_grad(set_to_none=True)
    aux_loss.backward()
    dist.average_gradients(aux)
    finite_step(aux_opt, aux)
    return {"skipped": float(skipped), "loss": loss.item(), "bpp_full": terms["bpp_full"].item(),
            "psnr_full": psnr(terms["mse_full"].item()), "bpp_level": terms["bpp_level"].item(),
            "psnr_level": psnr(terms["mse_level"].item()), "aux": aux_loss.item(), **record,
            **{k: terms[k].item() for k in ("lpips_full", "lpips_level") if k in terms}}


class WeightAverage:
    """An exponential moving average of a model's weights: w_avg <- decay * w_avg + (1 - decay) * w after
    every step, the noise of the last ~1/(1 - decay) steps averaged out (a cheap stand-in for a lower
    learning rate at the end of a run). Starts from `state` (a checkpoint's average) or the model."""

    def __init__(self, model: torch.nn.Module, decay: float, state: dict | None = None):
        if not 0 < decay < 1:
            raise SiccError(f"the weight average's decay must lie in (0, 1), not {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        if state is not None:
            self.model.load_state_dict(state)

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        for avg, w in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(w, 1 - self.decay)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)


def _run_loop(out_dir: Path, steps: int, step: int, train_step, checkpoint, opt, lr: float, progress: bool,
              max_minutes: float | None, checkpoint_minutes: float, log_every: int,
              dist: Distributed | None = None) -> int:
    """The training loop every trainer shares: `train_step(step)` does one update and returns the
    floats to log (averaged over each `log_every` steps); checkpoints every few minutes, on
    Ctrl-C/SIGTERM and at the end; with `max_minutes`, stops when the time is up and runs the last
    15 % of it at lr/10. Under torchrun only rank 0 logs and checkpoints, and its clock rules."""
    from rich.progress import Progress

    dist = dist or Distributed.alone()
    if not dist.main:
        checkpoint, progress = (lambda step: None), False
    t0 = last_ckpt = time.time()
    sums: dict[str, float] = {}
    count = 0
    if dist.main:  # made only now: a run refused earlier (bad --resume, no images) leaves nothing behind
        out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.jsonl" if dist.main else os.devnull
    with open(log_path, "a") as log, Progress(disable=not progress) as bar, \
            _checkpoint_on_interrupt(lambda: checkpoint(step)):
        task = bar.add_task("training", total=steps, completed=step)
        while step < steps:
            elapsed_min = dist.rank0_value((time.time() - t0) / 60)
            if max_minutes is not None and elapsed_min > max_minutes:
                break
            # set every step: a resumed optimiser state carries the previous run's rate
            final_phase = max_minutes is not None and elapsed_min > 0.85 * max_minutes
            for g in opt.param_groups:
                g["lr"] = lr / 10 if final_phase else lr
            for k, v in train_step(step).items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            step += 1
            bar.update(task, completed=step)
            if step % log_every == 0 or step == steps:
                rec = {"step": step, "time_s": round(time.time() - t0, 1)}
                rec.update({k: round(v / count, 4) for k, v in sums.items()})
                log.write(json.dumps(rec) + "\n")
                log.flush()
                sums, count = {}, 0
            if time.time() - last_ckpt > checkpoint_minutes * 60:
                checkpoint(step)
                last_ckpt = time.time()
    checkpoint(step)
    return step


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def _prepare(out_dir: Path, threads: int | None, seed: int) -> Path:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return Path(out_dir)


def read_checkpoint(path: Path, config_type: type, *, mmap: bool = False) -> tuple[object, dict]:
    """A checkpoint.pt that train_codec (`config_type` ModelConfig) or train_prior (UNetConfig) wrote: its
    model's config and the whole state (model, optimizer, step). `mmap` maps the tensors instead of reading
    them, for a caller that wants only the config (training reads them: the optimizer updates its state
    in place)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # torch and pickle raise many kinds for a file that is not a checkpoint
        raise SiccError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not {"config", "model", "opt", "step"} <= state.keys():
        raise SiccError(f"{path}: not a sicc training checkpoint")
    if not _names_only_fields_of(state["config"], config_type):
        raise SiccError(f"{path}: a checkpoint of the other trainer's model (codec or prior)")
    try:
        cfg = config_type.from_json(state["config"])
    except (KeyError, TypeError, ValueError) as e:  # this model's settings, with a value it refuses
        raise SiccError(f"{path}: invalid model settings in the checkpoint ({e})") from None
    return cfg, state


def _names_only_fields_of(text, config_type: type) -> bool:
    """Whether a checkpoint's config is a JSON object of `config_type`'s settings (and not the other
    trainer's model's)."""
    try:
        settings = json.loads(text)
    except (TypeError, ValueError):
        return False
    names = {f.name for f in dataclasses.fields(config_type)}
    return isinstance(settings, dict) and bool(settings) and set(settings) <= names


def checkpoint_config(path: Path) -> ModelConfig:
    """The model a checkpoint.pt resumes (its layout, for options that change one part of it)."""
    return read_checkpoint(path, ModelConfig, mmap=True)[0]


def model_to_train(resume: Path | None, cfg: ModelConfig | None = None) -> tuple[ProgressiveCodec, dict | None]:
    """The codec to train: new (`cfg`, default ModelConfig()), or resumed from a checkpoint.pt (then also
    its full state) or a weights .safetensors. A `cfg` other than the file's starts that model from the
    file: every tensor whose name and shape match is taken (with a new slice layout: the transforms and
    the hyperprior), the rest starts fresh. Constant buffers always come from the constructor
    (`reset_constant_buffers`)."""
    from .weights import load_float_model, without_compressai_buffers

    if resume is None:
        return ProgressiveCodec(cfg or ModelConfig()).train(), None
    state = None
    if Path(resume).suffix == ".pt":
        saved, state = read_checkpoint(resume, ModelConfig)
        model = ProgressiveCodec(saved)
        model.load_state_dict(without_compressai_buffers(state["model"]))
    else:
        model = load_float_model(Path(resume))
    if cfg is not None and cfg != model.cfg:
        if state is not None:
            raise SiccError("a checkpoint.pt resumes its own model; start a new layout from a .safetensors")
        donor, model = model.state_dict(), ProgressiveCodec(cfg)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in donor.items() if k in own and own[k].shape == v.shape}, strict=False)
    return reset_constant_buffers(model).train(), state


def train_codec(
    data_dir: Path, out_dir: Path, steps: int, batch_size: int = 8, patch_size: int = 128, lr: float = 3e-4,
    resume: Path | None = None, threads: int | None = None, seed: int = 0, checkpoint_minutes: float = 5.0,
    log_every: int = 20, cfg: ModelConfig | None = None, progress: bool = True,
    max_minutes: float | None = None, reg_alpha: float = 0.0, precision: str = "fp32", lpips_weight: float = 0.0,
    device: str = "auto", full_weight: float = 0.5, z_rate_weight: float = 1.0, frozen_transforms: bool = False,
    ema: float = 0.0, plane_levels: bool = False, plane_lambdas: tuple[float, float] | None = None,
) -> Path:
    """Train (or resume) the codec; writes `out_dir/checkpoint.pt` and `out_dir/weights.safetensors`.
    `reg_alpha` > 0 adds the conditional-source-entropy regularizer (regularizer.py); `precision`
    "bf16" runs the image-resolution transforms under bf16 autocast; `lpips_weight` > 0 adds
    LPIPS (AlexNet) with SIC's per-level gamma (model.level_gammas) for the perceptually tuned weights.
    `device` "auto" takes CUDA when there is one; under torchrun each rank trains on its own crops.
    `full_weight` splits each step's loss between the full file and the step's level (SIC: 0.5);
    `z_rate_weight` multiplies the hyperlatent's bits in the loss; `frozen_transforms` trains only the
    entropy model (`freeze_transforms`), e.g. a new plane-layering head on a trained codec. `ema` > 0
    keeps an exponential moving average of the weights with that decay per step (`WeightAverage`), and
    the exported weights are the average's. `plane_levels` (plane-layered weights) makes the level
    term of step s a file of z and s mod L plane layers with its own bits (`progressive_loss` with
    fills, `plane_level_lambdas` with the ramp `plane_lambdas`, None: the default) instead of z alone."""
    from .weights import export_weights

    if plane_lambdas is not None and not plane_levels:
        raise SiccError("--plane-lambdas needs --plane-levels (it sets the plane levels' lambdas)")
    out_dir = _prepare(out_dir, threads, seed)
    dist = Distributed(device)
    model, state = model_to_train(resume, cfg)
    cfg = model.cfg
    if frozen_transforms:
        freeze_transforms(model)
    if plane_levels and cfg.layering != "planes":
        raise SiccError("--plane-levels needs plane-layered weights")
    fills = plane_fills().to(dist.device) if plane_levels else None
    model.to(dist.device)
    dist.same_start(model)
    main, aux = split_parameters(model)
    opt = torch.optim.Adam(main, lr=lr)
    aux_opt = torch.optim.Adam(aux, lr=1e-3)
    source_model = ConditionalSourceModel().to(dist.device) if reg_alpha > 0 else None
    source_opt = torch.optim.Adam(source_model.parameters(), lr=lr) if source_model else None
    step = 0
    if state is not None:
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        step = state["step"]
        if source_model is not None and "source_model" in state:
            source_model.load_state_dict(state["source_model"])
            source_opt.load_state_dict(state["source_opt"])
    if source_model is not None:
        dist.same_start(source_model)
    average = WeightAverage(model, ema, state.get("ema") if state else None) if ema > 0 else None
    sampler = CropSampler(data_dir, patch_size, seed=seed + step + 1_000_003 * dist.rank)
    levels = fills.levels if fills else len(cfg.slices)  # the level terms take 0..levels-1 in turn
    lambdas = plane_level_lambdas(levels, plane_lambdas) if fills else level_lambdas(levels)
    gammas = level_gammas(levels, lpips_weight)
    lpips = None
    if lpips_weight > 0:
        from .lpips import load_lpips

        lpips = copy.deepcopy(load_lpips()).to(dist.device)  # a copy: the cached one stays on the CPU
    model.train()
    model.transform_dtype = PRECISIONS[precision]
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN) and GPU

    objective = dict(lambdas=lambdas, lpips=lpips, gammas=gammas, full_weight=full_weight,
                     z_rate_weight=z_rate_weight, fills=fills)
    regularizer = None
    if source_model is not None:
        def regularizer(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
            # (1) fit q(x | x̂) by maximum likelihood on a detached x̂; (2) the codec maximises H(X|X̂)
            fit = source_model.bits_per_pixel(x, x_hat.detach())
            source_opt.zero_grad(set_to_none=True)
            fit.backward()
            dist.average_gradients(list(source_model.parameters()))
            finite_step(source_opt, list(source_model.parameters()))
            source_model.requires_grad_(False)
            h_cond = source_model.bits_per_pixel(x, x_hat)
            source_model.requires_grad_(True)
            return h_cond

    def train_step(step: int) -> dict:
        x = sampler.batch(batch_size).to(dist.device).contiguous(memory_format=torch.channels_last)
        record = codec_update(model, x, step % levels, opt, aux_opt, objective, dist, regularizer, reg_alpha)
        if average is not None:
            average.update(model)
        return record

    def checkpoint(step: int):
        state = {"config": cfg.to_json(), "model": model.state_dict(), "opt": opt.state_dict(),
                 "aux_opt": aux_opt.state_dict(), "step": step}
        if source_model is not None:
            state.update(source_model=source_model.state_dict(), source_opt=source_opt.state_dict())
        if average is not None:
            state["ema"] = average.model.state_dict()
        _atomic_torch_save(state, out_dir / "checkpoint.pt")
        export_weights(average.model if average else model, out_dir / "weights.safetensors", lpips_weight)

    _run_loop(out_dir, steps, step, train_step, checkpoint, opt, lr, progress, max_minutes, checkpoint_minutes,
              log_every, dist)
    dist.close()
    return out_dir / "weights.safetensors"


def train_prior(
    data_dir: Path, out_dir: Path, steps: int, batch_size: int = 16, patch_size: int = 64, lr: float = 2e-4,
    resume: Path | None = None, threads: int | None = None, seed: int = 0, checkpoint_minutes: float = 5.0,
    log_every: int = 20, cfg=None, progress: bool = True, max_minutes: float | None = None,
    precision: str = "fp32",
) -> Path:
    """Train (or resume) the diffusion prior (ε-prediction, uniform t); writes `out_dir/checkpoint.pt`
    and `out_dir/prior.safetensors`. `precision` "bf16" runs the UNet under bf16 autocast."""
    from .diffusion import LinearSchedule, UNet, UNetConfig, denoising_loss
    from .perceptual import export_prior, load_prior

    out_dir = _prepare(out_dir, threads, seed)
    state = None
    if resume is not None and Path(resume).suffix == ".pt":
        saved, state = read_checkpoint(resume, UNetConfig)
        model = UNet(saved)
        model.load_state_dict(state["model"])
    elif resume is not None:
        model = load_prior(Path(resume))
    else:
        model = UNet(cfg or UNetConfig())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step = 0
    if state is not None:
        opt.load_state_dict(state["opt"])
        step = state["step"]
    sampler = CropSampler(data_dir, patch_size, seed=seed + step)
    schedule = LinearSchedule()
    model.train()
    model.to(memory_format=torch.channels_last)
    dtype = PRECISIONS[precision]

    def train_step(step: int) -> dict:
        x0 = sampler.batch(batch_size).contiguous(memory_format=torch.channels_last) * 2 - 1
        with torch.autocast(x0.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = denoising_loss(model, schedule, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        skipped = not finite_step(opt, list(model.parameters()), clip=1.0)
        return {"skipped": float(skipped), "loss": loss.item()}

    def checkpoint(step: int):
        _atomic_torch_save({"config": model.cfg.to_json(), "model": model.state_dict(), "opt": opt.state_dict(),
                            "step": step}, out_dir / "checkpoint.pt")
        export_prior(model, out_dir / "prior.safetensors")

    _run_loop(out_dir, steps, step, train_step, checkpoint, opt, lr, progress, max_minutes, checkpoint_minutes,
              log_every)
    return out_dir / "prior.safetensors"
