import numpy as np
import pytest

from codec.entropy import TOTAL, VALUE_LIMIT, SymbolTables, decode_values, encode_values, quantize_pmf
from codec.errors import SiccError
from codec.weights import gaussian_tables, scale_table


@pytest.fixture(scope="module")
def gauss():
    return gaussian_tables()[0]


def test_quantize_pmf_is_a_valid_table():
    rng = np.random.default_rng(0)
    for n in (1, 3, 50, 2000):
        pmf = rng.random(n) ** 4
        pmf = pmf / pmf.sum() * 0.999
        counts = quantize_pmf(pmf)
        assert len(counts) == n + 1 and counts.sum() == TOTAL and counts.min() >= 1


def test_symbols_round_trip_exactly_with_escapes(gauss):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(gauss.lengths), size=(3, 17, 19))
    values = np.round(rng.normal(0, 1, idx.shape) * scale_table()[idx]).astype(np.int64)
    values.flat[::37] = rng.integers(-VALUE_LIMIT, VALUE_LIMIT, size=values.flat[::37].shape)  # escapes
    values.flat[0], values.flat[1] = VALUE_LIMIT, -VALUE_LIMIT
    data = encode_values(values, idx, gauss)
    out = decode_values(data, idx, gauss)
    assert out.shape == values.shape and np.array_equal(out, values)


def test_rate_is_close_to_the_model_entropy(gauss):
    rng = np.random.default_rng(2)
    t = 40
    s = scale_table()[t]
    values = np.round(rng.normal(0, s, 20000)).astype(np.int64)
    idx = np.full(values.shape, t)
    bits = len(encode_values(values, idx, gauss)) * 8
    counts = gauss.counts[t, : gauss.lengths[t]]
    p = counts[values - gauss.offsets[t]] / TOTAL
    ideal = -np.log2(p).sum()
    assert ideal <= bits <= ideal * 1.01 + 64


def test_scalar_tables_and_empty_input():
    tab = SymbolTables.from_pmfs([np.array([0.25, 0.5, 0.25])], [-1])
    tab.validate()
    assert decode_values(encode_values(np.zeros(0), np.zeros(0, int), tab), np.zeros(0, int), tab).size == 0


def test_bad_lengths_are_refused(gauss):
    with pytest.raises(SiccError):
        decode_values(b"abc", np.zeros(4, int), gauss)


def test_malformed_tables_are_refused():
    tab = SymbolTables.from_pmfs([np.array([0.5, 0.5])], [0])
    tab.counts[0, 0] += 1
    with pytest.raises(SiccError):
        tab.validate()
