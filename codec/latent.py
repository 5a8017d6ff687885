"""Image tensor <-> layer payloads: the network joined to the entropy coder, without any file format.

Layer 1 codes z; then layer 1 + k codes slice k, or (plane layering) the layers of planes.py's
schedule code the one slice's trit planes. Every probability table index and every mean comes from
the exact integer path (exact.py), so the decoder rebuilds the encoder's tables bit for bit; only
the analysis and synthesis transforms run in float (on any device).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import torch

from .entropy import VALUE_LIMIT, SymbolTables, decode_values, encode_values
from .errors import SiccError
from .exact import ONE, from_fixed
from .model import PAD_MULTIPLE, SCALE_MIN, ExactEntropyModel, ProgressiveCodec
from .planes import PlaneModel, PlaneState, decode_planes, encode_planes, plane_schedule
from .tiling import apply_tiled

# Tiles for the float transforms on large images: 768 px of output per tile (a Kodak image is one), with context margins
# wider than the receptive fields (g_a: 61 px; g_s: a few latent positions), so no seams.
TILE_PX, ANALYSIS_MARGIN_PX, SYNTHESIS_MARGIN = 768, 64, 8

FILLS = ("mean", "sample")

# Plane layering's layers (docs/format.md): planes 8..4 ride with the first cut of plane 3; planes 3, 2, 1
# are each cut by Gaussian table index, widest scales first, into layers of about 1.3-1.5x the bits (Kodak).
PLANE_CUTS = {3: (36, 32, 28, 0), 2: (32, 28, 24, 0), 1: (28, 24, 20, 0)}

_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextmanager
def one_intra_op_thread():
    """Float convs sum in an order that depends on torch's thread count, which flips a few rounded
    pixels (and, rarely, symbols). The transforms therefore run on one intra-op thread, so bytes and
    pixels do not depend on OMP/MKL settings; batches get their parallelism from `-j` workers.
    Counted, so concurrent workers keep one thread until the last leaves."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


class LatentCodec:
    def __init__(self, model: ProgressiveCodec, gaussian: SymbolTables, scale_bounds: torch.Tensor,
                 z_tables: SymbolTables, weights_id: bytes, lpips_weight: float = 0.0):
        self.model = model.eval()
        self.cfg = model.cfg
        self.exact = ExactEntropyModel(model)
        self.gaussian = gaussian
        self.scale_bounds = scale_bounds.to(torch.float64).contiguous()
        self.z_tables = z_tables
        self.weights_id = weights_id
        self.lpips_weight = lpips_weight  # the training objective's, which encoder refinement follows
        self.device = torch.device("cpu")
        self.planes = PlaneModel(gaussian) if self.cfg.layering == "planes" else None
        self.schedule = plane_schedule(self.planes, PLANE_CUTS) if self.planes else None

    @property
    def layers_total(self) -> int:
        """Layers of a full file: z, then one per slice or per plane layer."""
        return 1 + (len(self.schedule) if self.planes else len(self.cfg.slices))

    def plane_fills(self):
        """This codec's plane decoder as tensors on its device (plane_fills.py), for refinement; None
        for slice layering."""
        if self.planes is None:
            return None
        from .plane_fills import PlaneFills

        return PlaneFills(self.planes, self.schedule, self.scale_bounds.numpy()).to(self.device)

    def to(self, device) -> "LatentCodec":
        self.device = torch.device(device)
        # channels_last: oneDNN's fast convolutions (CPU synthesis 25 % faster, session 8)
        self.model.to(self.device, memory_format=torch.channels_last)
        return self

    def _float_input(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device).contiguous(memory_format=torch.channels_last)

    def _scale_index(self, scale_fixed: torch.Tensor) -> np.ndarray:
        return torch.searchsorted(self.scale_bounds, scale_fixed.contiguous()).numpy()

    def _z_index(self, shape) -> np.ndarray:
        return np.broadcast_to(np.arange(self.cfg.Z).reshape(1, -1, 1, 1), shape)

    def encode(self, x: torch.Tensor, refine_steps: int = 0) -> list[bytes]:
        """x: [1, 3, H, W] in [0, 1], H and W multiples of PAD_MULTIPLE -> one payload per layer.
        `refine_steps` > 0 optimises the latents for this image first (refine.py): slower, smaller."""
        return self.encode_latent(x, refine_steps)[0]

    def encode_latent(self, x: torch.Tensor, refine_steps: int = 0) -> tuple[list[bytes], torch.Tensor]:
        """`encode`, also returning the fixed-point latent y_hat that the decoder will rebuild."""
        x = self._float_input(x)
        with torch.inference_mode(), one_intra_op_thread():
            y = apply_tiled(self.model.g_a, x, 1, 16, TILE_PX, ANALYSIS_MARGIN_PX)
            z = self.model.h_a(y)
        if refine_steps > 0:
            from .refine import refine_latents

            with one_intra_op_thread():  # inference tensors take no gradients: refine copies
                y, z = refine_latents(self.model, x.clone(), y.clone(), z.clone(), refine_steps,
                                      lpips_weight=self.lpips_weight, fills=self.plane_fills())
        return self._code_latents(y, z)

    @torch.inference_mode()
    def _code_latents(self, y: torch.Tensor, z: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
        medians = self.model.entropy_bottleneck.quantiles[:, 0, 1].reshape(1, -1, 1, 1)
        z_sym = torch.round(z - medians).clamp(-VALUE_LIMIT, VALUE_LIMIT).cpu()
        layers = [encode_values(z_sym.numpy(), self._z_index(z_sym.shape), self.z_tables)]
        hyper = self.exact.hyper(z_sym)
        if self.planes:
            mean, scale = self.exact.slice_params(0, hyper, [])
            sym = torch.round(y.cpu().double() - mean / ONE).clamp(-VALUE_LIMIT, VALUE_LIMIT)
            layers += encode_planes(sym.numpy(), self._scale_index(scale), self.planes, self.schedule)
            return layers, sym * ONE + mean
        decoded: list[torch.Tensor] = []
        for k, y_k in enumerate(y.split(list(self.cfg.slices), dim=1)):
            mean, scale = self.exact.slice_params(k, hyper, decoded)
            sym = torch.round(y_k.cpu().double() - mean / ONE).clamp(-VALUE_LIMIT, VALUE_LIMIT)
            layers.append(encode_values(sym.numpy(), self._scale_index(scale), self.gaussian))
            decoded.append(sym * ONE + mean)
        return layers, torch.cat(decoded, dim=1)

    @torch.inference_mode()
    def decode(self, payloads: list[bytes], height: int, width: int, fill: str = "mean",
               seed: int | None = None) -> torch.Tensor:
        """Payloads of layers 1..K (K >= 1) -> [1, 3, height, width] in [0, 1] on the codec's device."""
        y_hat = self._float_input(from_fixed(self.decode_latent(payloads, height, width, fill, seed)))
        with one_intra_op_thread():
            return apply_tiled(self.model.g_s, y_hat, 16, 1, TILE_PX // 16, SYNTHESIS_MARGIN).clamp_(0.0, 1.0)

    @torch.inference_mode()
    def decode_latent(self, payloads: list[bytes], height: int, width: int, fill: str = "mean",
                      seed: int | None = None) -> torch.Tensor:
        """Payloads -> the fixed-point latent y_hat (exact: identical on every machine).

        Slices not transmitted are filled slice by slice: "mean" uses the predicted mean (best MSE),
        "sample" draws mean + scale * N(0, 1), a different plausible latent per seed. Under plane
        layering every value is known to an interval: "mean" takes the model's mean inside it,
        "sample" a seeded draw from the model inside it."""
        if not 1 <= len(payloads) <= self.layers_total:
            raise SiccError(f"need 1 to {self.layers_total} layers, got {len(payloads)}")
        if fill not in FILLS or height % PAD_MULTIPLE or width % PAD_MULTIPLE:
            raise ValueError("bad fill or unpadded size")
        zh, zw = height // PAD_MULTIPLE, width // PAD_MULTIPLE
        z_sym = decode_values(payloads[0], self._z_index((1, self.cfg.Z, zh, zw)), self.z_tables)
        hyper = self.exact.hyper(torch.from_numpy(z_sym))
        if self.planes:
            return self._decode_planes(payloads[1:], hyper, fill, seed)
        rng = torch.Generator().manual_seed(0 if seed is None else seed)
        decoded: list[torch.Tensor] = []
        for k in range(len(self.cfg.slices)):
            mean, scale = self.exact.slice_params(k, hyper, decoded)
            if k + 1 < len(payloads):
                sym = decode_values(payloads[k + 1], self._scale_index(scale), self.gaussian)
                decoded.append(torch.from_numpy(sym).to(torch.float64) * ONE + mean)
            elif fill == "sample":
                sigma = scale.clamp(min=SCALE_MIN * ONE) / ONE
                noise = torch.randn(mean.shape, generator=rng, dtype=torch.float64)
                decoded.append(mean + torch.round(ONE * sigma * noise))
            else:
                decoded.append(mean)
        return torch.cat(decoded, dim=1)

    def reencoder(self):
        """What perceptual decoding holds its result to: `reencode(x, level)`, the plain decode of
        x's own file cut to `level` + 1 layers (differentiable, straight through the rounding)."""
        return self.model if self.planes is None else _PlaneReencoder(self)

    def _decode_planes(self, payloads: list[bytes], hyper: torch.Tensor, fill: str, seed: int | None) -> torch.Tensor:
        mean, scale = self.exact.slice_params(0, hyper, [])
        state = decode_planes(payloads, self._scale_index(scale), self.planes, self.schedule)
        if fill == "sample":
            sym = state.sample(np.random.default_rng(0 if seed is None else seed))
        else:
            sym = state.expected()
        # fixed point, rounded from a ratio of integers: the same latent on every machine
        return torch.from_numpy(np.round(sym * ONE).reshape(mean.shape)) + mean


class _PlaneReencoder:
    """`ProgressiveCodec.reencode` for plane layering: x's values cut to the intervals that `level`
    plane layers leave, each replaced by the model's mean inside it. Float entropy parameters: a
    projection target, not a bitstream."""

    def __init__(self, codec: LatentCodec):
        self.codec = codec
        self.model = codec.model

    def to(self, device):
        self.model.to(device)
        return self

    def requires_grad_(self, flag: bool):
        self.model.requires_grad_(flag)
        return self

    def reencode(self, x: torch.Tensor, level: int) -> torch.Tensor:
        model, codec = self.model, self.codec
        y = model.g_a(x)
        mean, scale = model.slice_params(0, model.decoded_hyper(y), [])
        with torch.no_grad():
            sym = torch.round(y - mean).clamp(-VALUE_LIMIT, VALUE_LIMIT).double().cpu().numpy().astype(np.int64)
            table = codec._scale_index((model.scale_bound(scale).double() * ONE).cpu())
            state = PlaneState(codec.planes, table)
            for layer in codec.schedule[:level]:
                state.advance(sym.ravel(), layer)
            cut = torch.from_numpy(state.expected().reshape(sym.shape)).to(y)
        y_hat = (y - mean) + (cut - (y - mean)).detach() + mean
        return model.g_s(y_hat)
