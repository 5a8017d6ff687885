"""The library API under the CLI: `encode_image`, `decode_image`, `truncate` (and `container.describe`).

Bytes in, bytes / images out; no paths written here (the CLI owns files and atomic writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import container
from .container import Header, choose_layer_count, keep_layers
from .errors import SiccError
from .imageio import SourceImage, from_pil, pack_alpha, read_image, to_pil, unpack_alpha
from .memory import prepare_for_image
from .model import PAD_MULTIPLE
from .weights import find_weights_by_id, load_codec


def _source(image) -> SourceImage:
    if isinstance(image, SourceImage):
        return image
    if isinstance(image, Image.Image):
        return from_pil(image)
    if isinstance(image, (str, Path)):
        try:
            image = Path(image).read_bytes()
        except OSError as e:
            raise SiccError(e.strerror or str(e)) from None
    return read_image(bytes(image))


def _padded_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Pad to a multiple of PAD_MULTIPLE by edge replication (no hard border for the transforms)."""
    h, w, _ = rgb.shape
    hp, wp = _padded_size(h, w)
    padded = np.pad(rgb, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    return torch.from_numpy(padded).permute(2, 0, 1)[None].float().div_(255.0)


def _padded_size(height: int, width: int) -> tuple[int, int]:
    return -(-height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE


def _rgb8(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """A decoded [1, 3, H', W'] tensor in [0, 1] as the H x W x 3 uint8 pixels the decoder writes."""
    return x[0, :, :height, :width].mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _check_rate(layers, bpp, nbytes, psnr=None):
    if sum(v is not None for v in (layers, bpp, nbytes, psnr)) > 1:
        raise SiccError("give at most one of layers, bpp, bytes" + (", psnr" if psnr is not None else ""))
    if bpp is not None and not bpp > 0:
        raise SiccError("bpp must be positive")
    if nbytes is not None and nbytes < 1:
        raise SiccError("bytes must be positive")
    if psnr is not None and not psnr > 0:
        raise SiccError("psnr must be positive")


def encode_image(image, *, weights: Path | None = None, layers: int | None = None, bpp: float | None = None,
                 nbytes: int | None = None, psnr: float | None = None, strip: bool = False, refine: int = 0,
                 device: str = "auto") -> bytes:
    """Encode an image (PIL image, path or encoded bytes) to `.sic` bytes. A rate option keeps only
    the largest prefix of layers that fits it; `psnr` keeps the smallest whose plain decode (on the
    CPU, as `decode_image`'s) reaches that many dB against the image's RGB (SiccError if the whole
    file does not). `refine` > 0 optimises the latents for this image for that many steps
    (refine.py): a smaller file at the same quality, for a much slower encode.
    `device` ("auto": CUDA when there is one, "cpu", "cuda") runs the analysis transform and the
    refinement; the entropy parameters are exact integer work on the CPU either way."""
    _check_rate(layers, bpp, nbytes, psnr)
    if refine < 0:
        raise SiccError("refine must be 0 or more steps")
    from .device import resolve_device

    codec = load_codec(weights, resolve_device(device))
    src = _source(image)
    h, w, _ = src.rgb.shape
    prepare_for_image(h * w)
    payloads = codec.encode(_padded_tensor(src.rgb), refine)
    extras = {}
    if src.alpha is not None:
        extras[container.TAG_ALPHA] = pack_alpha(src.alpha)
    if not strip:
        if src.icc_profile:
            extras[container.TAG_ICC] = src.icc_profile
        if src.exif:
            extras[container.TAG_EXIF] = src.exif
    header = Header(codec.weights_id, w, h, src.mode, src.bit_depth, codec.layers_total, (), extras)
    data = container.pack(header, payloads)
    if psnr is not None:
        layers = _fewest_layers_reaching(load_codec(weights, "cpu"), payloads, src.rgb, psnr)
    if layers is None and bpp is None and nbytes is None:
        return data
    return truncate(data, layers=layers, bpp=bpp, nbytes=nbytes)


def _fewest_layers_reaching(codec, payloads: list[bytes], rgb: np.ndarray, target: float) -> int:
    """The fewest layers whose plain decode reaches `target` dB PSNR against `rgb`, by bisection:
    every layer refines the one latent, so PSNR rises with the layer count (a few decodes, not all)."""
    from .evaluate import psnr

    h, w, _ = rgb.shape
    hp, wp = _padded_size(h, w)

    def quality(k: int) -> float:
        return psnr(_rgb8(codec.decode(payloads[:k], hp, wp), h, w), rgb)

    best = quality(len(payloads))
    if best < target:
        raise SiccError(f"the whole file reaches {best:.2f} dB PSNR, short of the {target:g} dB asked for")
    low, high = 1, len(payloads)  # high always reaches the target
    while low < high:
        mid = (low + high) // 2
        if quality(mid) >= target:
            high = mid
        else:
            low = mid + 1
    return high


def codec_for(header: Header, weights: Path | None = None, device="cpu"):
    """The codec that made this file, on `device`: `weights` if given (refused if its id differs),
    else the shipped weights whose id the header records."""
    if weights is not None:
        codec = load_codec(weights, device)
        if codec.weights_id != header.weights_id:
            raise SiccError(f"made with weights {header.weights_id.hex()}, but {weights} is {codec.weights_id.hex()}")
        return codec
    path = find_weights_by_id(header.weights_id)
    if path is None:
        raise SiccError(f"made with weights {header.weights_id.hex()}, which this sicc does not ship; pass --weights FILE")
    return load_codec(path, device)


def decode_image(data: bytes, *, weights: Path | None = None, layers: int | None = None, bpp: float | None = None,
                 nbytes: int | None = None, allow_partial: bool = False, sample: bool = False,
                 seed: int | None = None, perceptual: bool = False, strength: float = 0.3, steps: int = 20,
                 device: str = "auto", prior_weights: Path | None = None, guidance: str = "project",
                 zeta: float | None = None, on_step=None) -> Image.Image:
    """Decode `.sic` bytes to a PIL image (mode per imageio's table; ICC/EXIF in `img.info`).

    `sample` fills the missing slices with a random synonymous latent (seeded) instead of the means.
    `perceptual` samples the diffusion prior under the constraint that re-encoding the result gives
    the layers decoded (idempotent inversion); `strength` 0..1 trades distortion for realism;
    `guidance` "project" or "dps" holds the sampler to the layers (see perceptual.py), `zeta` sets
    the DPS step, and `on_step(done, total)` reports sampler steps."""
    _check_rate(layers, bpp, nbytes)
    cont = container.parse(data)
    if cont.problem and not (allow_partial and cont.intact):
        hint = "; --allow-partial decodes the intact layers" if cont.intact else ""
        raise SiccError(cont.problem + hint)
    header = cont.header
    k = min(choose_layer_count(header, layers, bpp, nbytes), cont.intact)
    prepare_for_image(header.width * header.height)
    if perceptual:
        from .device import resolve_device
        from .perceptual import invert, prior_for

        dev = resolve_device(device)
        prior = prior_for(prior_weights, dev)
    codec = codec_for(header, weights, dev if perceptual else "cpu")
    if codec.planes is not None and header.version < 2:
        raise SiccError(f"a version {header.version} file cannot come from plane-layered weights")
    hp, wp = _padded_size(header.height, header.width)
    x = codec.decode(list(cont.payloads[:k]), hp, wp, fill="sample" if sample else "mean", seed=seed)
    if perceptual:
        x = invert(codec.reencoder(), x, k - 1, prior, strength, steps, seed or 0, zeta, on_step=on_step, method=guidance)
    rgb = _rgb8(x, header.height, header.width)
    alpha = unpack_alpha(header.alpha, header.width, header.height) if header.alpha else None
    img = to_pil(np.ascontiguousarray(rgb), alpha, header.mode)
    if header.icc_profile:
        img.info["icc_profile"] = header.icc_profile
    if header.exif:
        img.info["exif"] = header.exif
    return img


def truncate(data: bytes, *, layers: int | None = None, bpp: float | None = None, nbytes: int | None = None) -> bytes:
    """A valid smaller `.sic` keeping the first layers, without re-encoding."""
    _check_rate(layers, bpp, nbytes)
    cont = container.parse(data)
    if cont.problem:
        raise SiccError(cont.problem)
    return keep_layers(cont, choose_layer_count(cont.header, layers, bpp, nbytes))
