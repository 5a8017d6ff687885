"""Images in and out: any Pillow mode <-> the RGB (+ alpha) the codec codes, and back.

| original mode                     | coded as          | decoded as                          |
|-----------------------------------|-------------------|-------------------------------------|
| RGB                               | RGB               | RGB                                 |
| RGBA, RGBa, PA, P with transparency | RGB + alpha     | RGBA (alpha lossless)               |
| L, 1, F                           | grey RGB          | L                                   |
| LA, La                            | grey RGB + alpha  | LA                                  |
| I;16, I;16B, I;16L, I             | grey RGB, 8 bits  | I;16 (value * 257: the full range)  |
| P, CMYK, YCbCr, LAB, HSV, RGBX    | RGB               | RGB (PNG cannot hold these modes)   |
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import SiccError

# Refuse larger images before decoding their pixels (a decompression bomb declares a huge size).
MAX_PIXELS = 64_000_000
MAX_SIDE = 65_535

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "PA", "LA", "La")
_GREY_MODES = ("L", "1", "F", "LA", "La") + _SIXTEEN_BIT  # decoded as L (or LA, I;16)
_BIT_DEPTH = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}
_TO_RGB = ("RGB", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "L", "1", "F") + _SIXTEEN_BIT + _ALPHA_MODES


@dataclass
class SourceImage:
    rgb: np.ndarray  # [H, W, 3] uint8
    alpha: np.ndarray | None  # [H, W] uint8
    mode: str
    bit_depth: int
    icc_profile: bytes | None = None
    exif: bytes | None = None


def check_size(width: int, height: int):
    if width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise SiccError(f"image too large: {width}x{height} (limit {MAX_PIXELS // 10**6} megapixels, {MAX_SIDE} per side)")


def read_image(data: bytes) -> SourceImage:
    """Decode image bytes; the size is checked from the header before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise SiccError("not a readable image") from None
    except Image.DecompressionBombError:
        raise SiccError(f"image too large (limit {MAX_PIXELS // 10**6} megapixels)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise SiccError(f"not a readable image ({e})") from None
    check_size(*img.size)
    # Coding frame 0 of an animation would drop the rest without a word. Camera JPEGs often open as
    # MPO with a second, embedded preview or depth frame: there the first frame is the photo.
    if getattr(img, "is_animated", False) and img.format != "MPO":
        raise SiccError(f"{img.format} image with {img.n_frames} frames: sicc codes still images "
                        "(save the frame you want as a single image first)")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as e:
        raise SiccError(f"corrupt or truncated image ({e})") from None
    return from_pil(img)


def from_pil(img: Image.Image) -> SourceImage:
    check_size(*img.size)
    mode = img.mode
    if mode not in _TO_RGB:
        raise SiccError(f"unsupported image mode {mode}")
    alpha = None
    has_alpha = mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A")).copy()
        rgb = np.asarray(rgba.convert("RGB"))
    elif mode in _SIXTEEN_BIT:
        grey = np.asarray(img, dtype=np.int64).clip(0, 65535)
        grey8 = np.round(grey / 257.0).astype(np.uint8)
        rgb = np.repeat(grey8[..., None], 3, axis=2)
    elif mode == "F":
        grey8 = np.round(np.asarray(img, dtype=np.float64).clip(0, 255)).astype(np.uint8)
        rgb = np.repeat(grey8[..., None], 3, axis=2)
    else:
        rgb = np.asarray(img.convert("RGB"))
    exif = img.info.get("exif")
    return SourceImage(
        np.ascontiguousarray(rgb, dtype=np.uint8), alpha, mode, _BIT_DEPTH.get(mode, 8),
        _profile_of_decoded(img.info.get("icc_profile") or None, mode),
        exif if isinstance(exif, bytes) and exif else None,
    )


def _profile_of_decoded(icc: bytes | None, mode: str) -> bytes | None:
    """The source's ICC profile where it still describes the decoded pixels (grey or RGB). A CMYK
    profile does not once the pixels are RGB: attached to them, it tells viewers to read RGB as ink."""
    if icc is None or len(icc) < 20:
        return icc  # no header to read: kept as it came
    return icc if icc[16:20] == (b"GRAY" if mode in _GREY_MODES else b"RGB ") else None


def to_pil(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    """Decoded RGB (+ alpha) -> the image mode documented for the original mode."""
    img = Image.fromarray(rgb, "RGB")
    grey = mode in _GREY_MODES
    if grey:
        img = img.convert("L")
        if mode in _SIXTEEN_BIT:
            return Image.fromarray(np.asarray(img).astype(np.uint16) * 257)  # uint16 -> mode I;16
    if alpha is not None:
        img.putalpha(Image.fromarray(alpha, "L"))
    return img


def pack_alpha(alpha: np.ndarray) -> bytes:
    return zlib.compress(alpha.tobytes(), 9)


def unpack_alpha(blob: bytes, width: int, height: int) -> np.ndarray:
    d = zlib.decompressobj()
    try:
        raw = d.decompress(blob, width * height + 1)
    except zlib.error:
        raise SiccError("corrupt alpha plane") from None
    if len(raw) != width * height or d.unconsumed_tail:
        raise SiccError("corrupt alpha plane")
    return np.frombuffer(raw, np.uint8).reshape(height, width)


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
            ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM"}


def output_format(path: str | Path | None) -> str:
    """Pillow format for an output path by its suffix (PNG for stdout or unknown suffixes)."""
    return _FORMATS.get(Path(path).suffix.lower(), "PNG") if path else "PNG"


def image_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    """Serialise a decoded image, carrying its ICC profile and EXIF where the format can."""
    buf = io.BytesIO()
    extra = {}
    if img.info.get("icc_profile"):
        extra["icc_profile"] = img.info["icc_profile"]
    if img.info.get("exif") and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        extra["exif"] = img.info["exif"]
    try:
        img.save(buf, format=fmt, **extra)
    except (OSError, ValueError, KeyError) as e:
        raise SiccError(f"cannot write {img.mode} image as {fmt} ({e})") from None
    return buf.getvalue()
