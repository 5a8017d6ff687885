"""The `.sic` container: header, layer table, layer payloads. Pure Python, bytes in / objects out.

The byte layout is specified in docs/format.md; keep the two in step (any change bumps FORMAT_VERSION).
Nothing here knows about networks or entropy coding: a layer payload is an opaque byte string.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field, replace

from .errors import SiccError

MAGIC = b"\x89SIC"
FORMAT_VERSION = 2  # written by this sicc; version 1 (before plane layering) has the same layout
READ_VERSIONS = (1, 2)
WEIGHTS_ID_BYTES = 16
MAX_MODE_LEN = 16
MAX_LAYERS = 255
_CRC = struct.Struct("<I")

# Optional metadata blocks, kept in the header so that the header checksum covers them.
TAG_ICC = b"iCCP"
TAG_EXIF = b"eXIf"
TAG_ALPHA = b"aLPH"
_KNOWN_TAGS = (TAG_ICC, TAG_EXIF, TAG_ALPHA)


@dataclass(frozen=True)
class LayerEntry:
    length: int
    crc32: int


@dataclass(frozen=True)
class Header:
    weights_id: bytes
    width: int
    height: int
    mode: str  # Pillow mode of the original image ("RGB", "RGBA", "L", "I;16", ...)
    bit_depth: int  # bits per sample of the original image
    layers_total: int  # layers the encoder produced; `layers` may hold a prefix of them
    layers: tuple[LayerEntry, ...]
    extras: dict[bytes, bytes] = field(default_factory=dict)
    version: int = FORMAT_VERSION  # a truncated file keeps its own

    @property
    def icc_profile(self) -> bytes | None:
        return self.extras.get(TAG_ICC)

    @property
    def exif(self) -> bytes | None:
        return self.extras.get(TAG_EXIF)

    @property
    def alpha(self) -> bytes | None:
        """The alpha plane, zlib-compressed, width*height bytes once inflated."""
        return self.extras.get(TAG_ALPHA)


@dataclass(frozen=True)
class Container:
    header: Header
    payloads: tuple[bytes, ...]  # the intact prefix of the layers listed in the header
    problem: str | None = None  # why fewer payloads than header.layers are usable, if so

    @property
    def intact(self) -> int:
        return len(self.payloads)


def _header_bytes(h: Header) -> bytes:
    mode = h.mode.encode("ascii")
    if not 1 <= len(mode) <= MAX_MODE_LEN:
        raise ValueError(f"mode name {h.mode!r} does not fit the header")
    if len(h.weights_id) != WEIGHTS_ID_BYTES:
        raise ValueError("weights id must be 16 bytes")
    if not 1 <= h.layers_total <= MAX_LAYERS or len(h.layers) > h.layers_total:
        raise ValueError("bad layer count")
    body = bytearray()
    body += h.weights_id
    body += struct.pack("<II", h.width, h.height)
    body += struct.pack("<B", len(mode)) + mode
    body += struct.pack("<BBB", h.bit_depth, h.layers_total, len(h.layers))
    for entry in h.layers:
        body += struct.pack("<II", entry.length, entry.crc32)
    # known blocks in their fixed order, then any a newer writer added, as they came: truncate keeps them
    extras = [(tag, h.extras[tag]) for tag in _KNOWN_TAGS if h.extras.get(tag)]
    extras += [(tag, blob) for tag, blob in h.extras.items() if tag not in _KNOWN_TAGS]
    body += struct.pack("<B", len(extras))
    for tag, blob in extras:
        body += tag + struct.pack("<I", len(blob)) + blob
    header_len = len(MAGIC) + 1 + 4 + len(body) + _CRC.size
    if h.version not in READ_VERSIONS:
        raise ValueError("bad format version")
    out = MAGIC + struct.pack("<BI", h.version, header_len) + bytes(body)
    return out + _CRC.pack(zlib.crc32(out))


def pack(header: Header, payloads: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Serialise a header and its layer payloads; the layer table is filled from the payloads."""
    layers = tuple(LayerEntry(len(p), zlib.crc32(p)) for p in payloads)
    header = replace(header, layers=layers)
    return _header_bytes(header) + b"".join(payloads)


class _Reader:
    def __init__(self, data: bytes, end: int):
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise SiccError("corrupt header (fields overrun the header length)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))


def parse_header(data: bytes) -> tuple[Header, int]:
    """Parse and verify the header; returns it with its length in bytes."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise SiccError("not a .sic file (bad magic)")
    if len(data) < len(MAGIC) + 5:
        raise SiccError("truncated header")
    version, header_len = struct.unpack_from("<BI", data, len(MAGIC))
    if version not in READ_VERSIONS:
        raise SiccError(f"unsupported .sic format version {version} (this sicc reads versions "
                        f"{', '.join(map(str, READ_VERSIONS))})")
    if header_len < len(MAGIC) + 5 + _CRC.size:
        raise SiccError("corrupt header (bad header length)")
    if len(data) < header_len:
        raise SiccError(f"truncated header ({len(data)} of {header_len} bytes)")
    (stored_crc,) = _CRC.unpack_from(data, header_len - _CRC.size)
    if zlib.crc32(data[: header_len - _CRC.size]) != stored_crc:
        raise SiccError("header checksum mismatch")

    r = _Reader(data, header_len - _CRC.size)
    r.pos = len(MAGIC) + 5
    weights_id = r.take(WEIGHTS_ID_BYTES)
    width, height = r.unpack("II")
    (mode_len,) = r.unpack("B")
    try:
        mode = r.take(mode_len).decode("ascii")
    except UnicodeDecodeError:
        raise SiccError("corrupt header (mode name)") from None
    bit_depth, layers_total, layer_count = r.unpack("BBB")
    layers = tuple(LayerEntry(*r.unpack("II")) for _ in range(layer_count))
    (extra_count,) = r.unpack("B")
    extras: dict[bytes, bytes] = {}
    for _ in range(extra_count):
        tag = r.take(4)
        (length,) = r.unpack("I")
        extras[tag] = r.take(length)
    if r.pos != r.end:
        raise SiccError("corrupt header (unexpected bytes after the fields)")
    if width == 0 or height == 0 or not mode or layer_count > layers_total or layers_total == 0:
        raise SiccError("corrupt header (impossible field values)")
    header = Header(weights_id, width, height, mode, bit_depth, layers_total, layers, extras, version)
    return header, header_len


def parse(data: bytes) -> Container:
    """Parse a whole file. Layers that are incomplete or fail their checksum are not returned:
    `Container.problem` says what stopped the intact prefix."""
    header, offset = parse_header(data)
    payloads: list[bytes] = []
    problem = None
    for i, entry in enumerate(header.layers, start=1):
        chunk = data[offset : offset + entry.length]
        if len(chunk) < entry.length:
            problem = f"file is truncated: {i - 1} of {len(header.layers)} layers intact"
            break
        if zlib.crc32(chunk) != entry.crc32:
            problem = f"layer {i} checksum mismatch ({i - 1} of {len(header.layers)} layers intact)"
            break
        payloads.append(chunk)
        offset += entry.length
    if problem is None and offset != len(data):
        problem = f"{len(data) - offset} unexpected bytes after the last layer"
    return Container(header, tuple(payloads), problem)


def prefix_size(header: Header, k: int) -> int:
    """Size in bytes of the file that keeps layers 1..k of `header`."""
    kept = replace(header, layers=header.layers[:k])
    return len(_header_bytes(kept)) + sum(e.length for e in kept.layers)


def choose_layer_count(
    header: Header, layers: int | None = None, bpp: float | None = None, nbytes: int | None = None
) -> int:
    """How many layers to keep for a `--layers K | --bpp X | --bytes N` request (None: all present)."""
    present = len(header.layers)
    if layers is not None:
        if layers < 1:
            raise SiccError("--layers must be at least 1")
        return min(layers, present)
    if bpp is None and nbytes is None:
        return present
    budget = nbytes if nbytes is not None else bpp * header.width * header.height / 8
    fitting = [k for k in range(1, present + 1) if prefix_size(header, k) <= budget]
    if not fitting:
        raise SiccError(f"rate budget too small: the smallest valid file is {prefix_size(header, 1)} bytes")
    return max(fitting)


def keep_layers(container: Container, k: int) -> bytes:
    """A valid file holding layers 1..k of an intact container: the `truncate` operation."""
    if not 1 <= k <= container.intact:
        raise SiccError(f"cannot keep {k} layers: {container.intact} intact")
    return pack(container.header, container.payloads[:k])


def describe(data: bytes) -> dict:
    """What `sicc info --json` prints: sizes per layer prefix, image and weights facts."""
    cont = parse(data)
    h = cont.header
    pixels = h.width * h.height
    rows = []
    for i, entry in enumerate(h.layers, start=1):
        size = prefix_size(h, i)  # the file `truncate --layers i` would write
        rows.append({"index": i, "bytes": entry.length, "cumulative_bytes": size,
                     "bpp": round(size * 8 / pixels, 5), "intact": i <= cont.intact})
    return {
        "format_version": h.version, "width": h.width, "height": h.height, "mode": h.mode,
        "bit_depth": h.bit_depth, "file_bytes": len(data), "bpp": round(len(data) * 8 / pixels, 5),
        "layers": rows, "layers_present": len(h.layers), "layers_intact": cont.intact,
        "layers_total": h.layers_total, "weights": h.weights_id.hex(),
        "icc_profile": h.icc_profile is not None, "exif": h.exif is not None, "alpha": h.alpha is not None,
        "problem": cont.problem,
    }
