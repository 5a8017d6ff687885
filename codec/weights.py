"""Weights files: fp16 safetensors holding the float network, its integer probability tables and its
configuration. A file's id (first 16 bytes of its SHA-256) is what `.sic` headers record."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy
from safetensors.torch import save as save_torch

from .entropy import SymbolTables
from .errors import SiccError
from .exact import ONE
from .model import SCALE_MIN, ModelConfig, ProgressiveCodec

WEIGHTS_FORMAT = "sicc-weights-1"
DEFAULT_WEIGHTS = "sicc-base.safetensors"
# Gaussian scale table, as CompressAI's: 64 levels, log-spaced.
SCALE_LEVELS, SCALE_MAX = 64, 256.0
GAUSSIAN_TAIL_SIGMAS = 5.0  # table support is +-(5 sigma + 1); values beyond it are escaped
Z_TABLE_MAX = 4096
# CompressAI's EntropyBottleneck kept its own tables as buffers; checkpoints from before codec/layers.py have them
_COMPRESSAI_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


def without_compressai_buffers(state: dict) -> dict:
    """A checkpoint's model state as ProgressiveCodec loads it."""
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in _COMPRESSAI_BUFFERS}


def shipped_weights_dir() -> Path:
    """The shipped weights: inside an installed wheel they are package `codec.shipped_weights`
    (pyproject maps it to `weights/`); in a checkout or editable install, `weights/` itself."""
    here = Path(__file__).resolve().parent
    for folder in (here / "shipped_weights", here.parent / "weights"):
        if folder.is_dir():
            return folder
    raise SiccError("no shipped weights found (broken installation?); pass --weights FILE")


def default_weights_path() -> Path:
    return shipped_weights_dir() / DEFAULT_WEIGHTS


def weights_path(name_or_path: Path | str | None) -> Path:
    """A weights file: an existing path as given, else a shipped file by name (`sicc-base-lpips`,
    with or without `.safetensors`), else the shipped default when none is given."""
    if name_or_path is None:
        return default_weights_path()
    path = Path(name_or_path)
    if path.exists() or path.parent != Path("."):
        return path
    shipped = shipped_weights_dir() / (path.name if path.suffix == ".safetensors" else f"{path.name}.safetensors")
    return shipped if shipped.exists() else path


def weights_id(path: Path) -> bytes:
    st = Path(path).stat()
    return _file_id(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=32)
def _file_id(path: str, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()[:16]


def find_weights_by_id(wid: bytes) -> Path | None:
    """A shipped weights file with this id, so files made with any shipped weights decode without flags."""
    folder = shipped_weights_dir()
    for p in sorted(folder.glob("sicc-*.safetensors")):
        if weights_id(p) == wid:
            return p
    return None


def scale_table() -> np.ndarray:
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


def gaussian_tables() -> tuple[SymbolTables, np.ndarray]:
    """Per table scale, the integer pmf of round(N(0, s)); and the fixed-point scale bounds that map
    a predicted scale to its table: index = number of bounds below it."""
    pmfs, offsets = [], []
    for s in scale_table():
        r = int(math.ceil(GAUSSIAN_TAIL_SIGMAS * s)) + 1
        v = torch.arange(-r, r + 1, dtype=torch.float64)
        pmf = torch.special.ndtr((v + 0.5) / s) - torch.special.ndtr((v - 0.5) / s)
        pmfs.append(pmf.numpy())
        offsets.append(-r)
    bounds = np.floor(scale_table()[:-1] * ONE)
    return SymbolTables.from_pmfs(pmfs, offsets), bounds


def z_tables(model: ProgressiveCodec, tail: float = 1e-6) -> SymbolTables:
    """Per z channel, the learned factorized density on the integers around its median. The support
    is read off the density itself (where the CDF leaves [tail/2, 1 - tail/2]), not off the learned
    quantiles, so a short training run whose quantiles have not converged still gets tight tables."""
    eb = model.entropy_bottleneck
    half = Z_TABLE_MAX // 2
    with torch.no_grad():
        med = eb.quantiles[:, 0, 1].float()
        v = torch.arange(-half, half + 1, dtype=torch.float32)
        samples = (med[:, None] + v[None, :])[:, None, :]  # [C, 1, L], the layout CompressAI expects
        pmf, lower, upper = eb._likelihood(samples, stop_gradient=True)
        pmf = pmf[:, 0].double()
        below = torch.sigmoid(upper[:, 0]).double()  # P(z <= v + 1/2)
        above = 1 - torch.sigmoid(lower[:, 0]).double()  # P(z >= v - 1/2)
    pmfs, offsets = [], []
    for c in range(len(med)):
        inside = torch.nonzero((below[c] > tail / 2) & (above[c] > tail / 2)).flatten()
        lo, hi = (int(inside[0]), int(inside[-1])) if len(inside) else (half, half)
        pmfs.append(pmf[c, lo : hi + 1].numpy())
        offsets.append(lo - half)
    return SymbolTables.from_pmfs(pmfs, offsets)


def export_weights(model: ProgressiveCodec, path: Path, lpips_weight: float = 0.0) -> bytes:
    """Write fp16 weights plus the integer tables computed from exactly those fp16 values. Returns the id.
    `lpips_weight`: the LPIPS weight of the objective they were trained on (encoder refinement uses it)."""
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    gauss, bounds = gaussian_tables()
    ztab = z_tables(model)
    for name, tab in (("gaussian", gauss), ("z", ztab)):
        tensors[f"tables.{name}.counts"] = torch.from_numpy(tab.counts.astype(np.int32))
        tensors[f"tables.{name}.lengths"] = torch.from_numpy(tab.lengths.astype(np.int32))
        tensors[f"tables.{name}.offsets"] = torch.from_numpy(tab.offsets.astype(np.int32))
    tensors["tables.gaussian.scale_bounds"] = torch.from_numpy(bounds.astype(np.int64))
    meta = {"format": WEIGHTS_FORMAT, "config": model.cfg.to_json(), "lpips_weight": repr(float(lpips_weight))}
    return write_weights_file(tensors, meta, path)


def write_weights_file(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> bytes:
    """Atomically write a safetensors file; returns its id."""
    blob = save_torch(tensors, metadata=meta)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return hashlib.sha256(blob).digest()[:16]


def read_weights_file(path: Path, fmt: str) -> tuple[dict[str, np.ndarray], dict[str, str], bytes]:
    """Arrays, metadata and id of a safetensors file whose metadata declares format `fmt` (no pickle)."""
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise SiccError(f"cannot read weights {path}: {e.strerror or e}") from None
    try:
        arrays = load_numpy(blob)
        header_len = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError):
        raise SiccError(f"{path}: not a sicc weights file") from None
    if meta.get("format") != fmt:
        raise SiccError(f"{path}: not a {fmt} file (format {meta.get('format')!r})")
    return arrays, meta, hashlib.sha256(blob).digest()[:16]


def _read(path: Path) -> tuple[dict[str, np.ndarray], ModelConfig, float, bytes]:
    """Arrays, configuration, the objective's LPIPS weight (absent in files before session 7: 0) and id."""
    arrays, meta, wid = read_weights_file(path, WEIGHTS_FORMAT)
    try:
        cfg = ModelConfig.from_json(meta["config"])
        lpips_weight = float(meta.get("lpips_weight", "0"))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        raise SiccError(f"{path}: weights file has a malformed configuration") from None
    if not math.isfinite(lpips_weight) or lpips_weight < 0:
        raise SiccError(f"{path}: weights file has a malformed configuration")
    return arrays, cfg, lpips_weight, wid


def read_config(path: Path) -> ModelConfig:
    return _read(path)[1]


def load_float_model(path: Path) -> ProgressiveCodec:
    arrays, cfg, _, _ = _read(path)
    return _float_model(arrays, cfg, path)


def _float_model(arrays: dict[str, np.ndarray], cfg: ModelConfig, path: Path) -> ProgressiveCodec:
    model = ProgressiveCodec(cfg)
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items() if not k.startswith("tables.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:
        raise SiccError(f"{path}: weights do not fit the model they declare") from None
    if missing or unexpected:
        raise SiccError(f"{path}: weights do not fit the model they declare")
    return model.eval()


def _tables(arrays, name) -> SymbolTables:
    try:
        tab = SymbolTables(arrays[f"tables.{name}.counts"], arrays[f"tables.{name}.lengths"],
                           arrays[f"tables.{name}.offsets"])
    except KeyError:
        raise SiccError("weights file lacks its probability tables") from None
    tab.validate()
    return tab


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int, device: str):
    from .latent import LatentCodec

    arrays, cfg, lpips_weight, wid = _read(Path(path))
    model = _float_model(arrays, cfg, Path(path))
    gauss = _tables(arrays, "gaussian")
    ztab = _tables(arrays, "z")
    if len(ztab.lengths) != cfg.Z or len(gauss.lengths) != SCALE_LEVELS:
        raise SiccError(f"{path}: probability tables do not fit the model")
    bounds = torch.from_numpy(arrays["tables.gaussian.scale_bounds"].astype(np.float64))
    return LatentCodec(model, gauss, bounds, ztab, wid, lpips_weight).to(device)


def load_codec(path: Path | None = None, device: str | torch.device = "cpu"):
    """The `LatentCodec` of a weights file (default: the shipped default weights) on `device`; cached
    per device, so concurrent decodes on different devices never move a shared model."""
    path = weights_path(path)
    try:
        st = path.stat()
    except OSError:
        raise SiccError(f"weights file not found: {path}") from None
    return _load_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, str(torch.device(device)))
