import json
import subprocess
import sys

import pytest

from codec import container
from codec.container import Header, choose_layer_count, describe, keep_layers, pack, parse, prefix_size
from codec.errors import SiccError

PAYLOADS = [b"z" * 12, b"\x01\x02\x03\x04" * 5, b"", b"\xff" * 40]


def make_header(**kw) -> Header:
    fields = dict(weights_id=bytes(range(16)), width=321, height=123, mode="I;16", bit_depth=16, layers_total=6,
                  layers=(), extras={container.TAG_ICC: b"icc-profile", container.TAG_EXIF: b"Exif\0\0xyz",
                                     container.TAG_ALPHA: b"alpha-bytes"})
    fields.update(kw)
    return Header(**fields)


def test_round_trip_keeps_every_field():
    data = pack(make_header(), PAYLOADS)
    c = parse(data)
    h = c.header
    assert (h.weights_id, h.width, h.height, h.mode, h.bit_depth, h.layers_total) == (
        bytes(range(16)), 321, 123, "I;16", 16, 6)
    assert h.icc_profile == b"icc-profile" and h.exif == b"Exif\0\0xyz" and h.alpha == b"alpha-bytes"
    assert [e.length for e in h.layers] == [len(p) for p in PAYLOADS]
    assert list(c.payloads) == PAYLOADS and c.problem is None


def test_no_extras_and_one_layer():
    c = parse(pack(make_header(extras={}, mode="RGB", bit_depth=8), [b"abcd"]))
    assert c.header.icc_profile is None and c.header.exif is None and c.header.alpha is None
    assert c.payloads == (b"abcd",)


def test_keep_layers_gives_valid_prefix_files():
    c = parse(pack(make_header(), PAYLOADS))
    for k in range(1, len(PAYLOADS) + 1):
        small = keep_layers(c, k)
        ck = parse(small)
        assert ck.problem is None and list(ck.payloads) == PAYLOADS[:k]
        assert ck.header.layers_total == 6
        assert len(small) == prefix_size(c.header, k)
    with pytest.raises(SiccError):
        keep_layers(c, len(PAYLOADS) + 1)


def test_truncation_at_every_offset_is_detected():
    data = pack(make_header(), PAYLOADS)
    header_len = len(data) - sum(map(len, PAYLOADS))
    for cut in range(len(data)):
        piece = data[:cut]
        if cut < header_len:
            with pytest.raises(SiccError):
                parse(piece)
        else:
            c = parse(piece)
            assert c.problem is not None and "truncated" in c.problem
            assert c.intact < len(PAYLOADS)
            assert list(c.payloads) == PAYLOADS[: c.intact]


def test_every_single_bit_flip_is_detected():
    data = pack(make_header(), PAYLOADS)
    for byte in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[byte] ^= 1 << bit
            try:
                c = parse(bytes(bad))
            except SiccError:
                continue
            assert c.problem is not None, (byte, bit)


def test_trailing_bytes_and_garbage_are_refused():
    data = pack(make_header(), PAYLOADS)
    assert parse(data + b"x").problem is not None
    for junk in (b"", b"\x89SI", b"PNG....", b"\x89SIC\x07" + bytes(40)):
        with pytest.raises(SiccError):
            parse(junk)


def test_choose_layer_count_by_layers_bpp_and_bytes():
    h = parse(pack(make_header(), PAYLOADS)).header
    sizes = [prefix_size(h, k) for k in range(1, 5)]
    assert choose_layer_count(h) == 4
    assert choose_layer_count(h, layers=2) == 2 and choose_layer_count(h, layers=99) == 4
    assert choose_layer_count(h, nbytes=sizes[2]) == 3
    assert choose_layer_count(h, nbytes=sizes[2] - 1) == 2
    assert choose_layer_count(h, nbytes=sizes[1] - 1) == 1
    assert choose_layer_count(h, bpp=sizes[0] * 8 / (321 * 123)) == 1
    with pytest.raises(SiccError, match="budget"):
        choose_layer_count(h, nbytes=sizes[0] - 1)


def test_describe_reports_sizes():
    data = pack(make_header(), PAYLOADS)
    d = describe(data)
    json.dumps(d)
    assert d["width"] == 321 and d["height"] == 123 and d["file_bytes"] == len(data)
    assert d["layers_total"] == 6 and len(d["layers"]) == 4 and d["weights"] == bytes(range(16)).hex()
    assert d["layers"][-1]["cumulative_bytes"] == len(data)
    assert [row["bytes"] for row in d["layers"]] == [len(p) for p in PAYLOADS]
    cum = [row["cumulative_bytes"] for row in d["layers"]]
    assert cum == sorted(cum)


def test_container_does_not_import_torch():
    code = "import sys, codec.container; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_truncate_keeps_blocks_a_newer_writer_added():
    extras = {b"zNEW": b"from the future", container.TAG_EXIF: b"Exif\0\0xyz", b"aOLD": b""}
    data = pack(make_header(extras=extras), PAYLOADS)
    # known blocks first in their fixed order, then the unknown ones in the order they came
    assert data.index(b"eXIf") < data.index(b"zNEW") < data.index(b"aOLD") < len(data) - sum(map(len, PAYLOADS))
    cut = keep_layers(parse(data), 2)
    h = parse(cut).header
    assert list(h.extras.items()) == [(container.TAG_EXIF, b"Exif\0\0xyz"), (b"zNEW", b"from the future"),
                                      (b"aOLD", b"")]
    assert len(cut) == prefix_size(parse(data).header, 2) and parse(cut).problem is None
