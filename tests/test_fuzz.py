"""Hostile .sic input: random bytes, truncations, bit flips. Every case ends in a SiccError or a
correct decode, never another exception. SICC_FUZZ_EXAMPLES=N raises the example counts (long mode)."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import container
from codec.api import decode_image, encode_image, truncate
from codec.errors import SiccError

from .conftest import photo

EXAMPLES = int(os.environ.get("SICC_FUZZ_EXAMPLES", "150"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def sic_file(tiny_weights):
    return encode_image(photo(48, 40), weights=tiny_weights)


@fuzz
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_parser(blob):
    try:
        container.parse(blob)
    except SiccError:
        pass


@fuzz
@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_magic(blob):
    try:
        container.parse(container.MAGIC + bytes([container.FORMAT_VERSION]) + blob)
    except SiccError:
        pass


@fuzz
@given(data=st.data())
def test_bit_flips_are_always_detected(data, sic_file, tiny_weights):
    pos = data.draw(st.integers(0, len(sic_file) * 8 - 1))
    bad = bytearray(sic_file)
    bad[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(SiccError):
        decode_image(bytes(bad), weights=tiny_weights)


def test_every_truncation_is_refused_or_decodes_the_intact_prefix(sic_file, tiny_weights):
    h = container.parse(sic_file).header
    header_len = len(sic_file) - sum(e.length for e in h.layers)
    step = max(1, len(sic_file) // EXAMPLES)
    for cut in range(0, len(sic_file), step):
        piece = sic_file[:cut]
        with pytest.raises(SiccError):
            decode_image(piece, weights=tiny_weights)
        if cut < header_len:
            continue
        try:
            out = decode_image(piece, weights=tiny_weights, allow_partial=True)
        except SiccError as e:
            assert "0 of" in str(e)  # not even the first layer is complete
            continue
        intact = container.parse(piece).intact
        ref = decode_image(truncate(sic_file, layers=intact), weights=tiny_weights)
        assert np.array_equal(np.asarray(out), np.asarray(ref))
