"""Entropy coding of integer symbols with constriction's range coder, from integer probability tables.

Knows nothing of networks: callers hand in integer values and, per value, the index of the table
that models it. Tables are integer counts (PRECISION bits, every entry >= 1) shipped inside the
weights file, so encoder and decoder use bit-identical distributions on every platform; they are
built once at export time (`quantize_pmf`), never at decode time from a platform's erf/exp.

A table t covers the values offsets[t] .. offsets[t] + lengths[t] - 1 plus one escape symbol; an
escaped value follows the grouped symbols as a raw 16-bit number (see docs/format.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import constriction
import numpy as np

from .errors import SiccError

PRECISION = 16
TOTAL = 1 << PRECISION
RAW_OFFSET = 1 << 15  # escaped values are sent as value + RAW_OFFSET in [0, 2**16)
VALUE_LIMIT = RAW_OFFSET - 1  # callers clamp values to +-VALUE_LIMIT


def quantize_pmf(pmf: np.ndarray) -> np.ndarray:
    """Probabilities of n in-range values -> n + 1 integer counts summing to 2**PRECISION, each >= 1;
    the last count is the escape symbol and carries the tail mass 1 - sum(pmf)."""
    p = np.append(np.clip(pmf, 0, None), max(0.0, 1.0 - float(np.sum(pmf))))
    n = len(p)
    if n >= TOTAL // 2:
        raise ValueError("table too long for the coder precision")
    p = p / p.sum()
    counts = 1 + np.floor(p * (TOTAL - n)).astype(np.int64)
    counts[np.argmax(counts)] += TOTAL - counts.sum()
    return counts


@dataclass
class SymbolTables:
    counts: np.ndarray  # int32 [T, L]; row t: lengths[t] value counts, then the escape count, zero padded
    lengths: np.ndarray  # int32 [T]
    offsets: np.ndarray  # int32 [T]: the value coded as symbol 0
    _models: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_pmfs(cls, pmfs: list[np.ndarray], offsets: list[int]) -> "SymbolTables":
        rows = [quantize_pmf(p) for p in pmfs]
        counts = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int32)
        for t, r in enumerate(rows):
            counts[t, : len(r)] = r
        return cls(counts, np.array([len(r) - 1 for r in rows], np.int32), np.array(offsets, np.int32))

    def validate(self):
        T = len(self.lengths)
        if self.counts.ndim != 2 or self.counts.shape[0] != T or self.offsets.shape != (T,):
            raise SiccError("weights file has malformed probability tables")
        for t in range(T):
            row = self.counts[t, : self.lengths[t] + 1]
            if self.lengths[t] < 1 or self.lengths[t] + 1 > self.counts.shape[1] or row.min() < 1 or row.sum() != TOTAL:
                raise SiccError("weights file has malformed probability tables")

    def model(self, t: int):
        m = self._models.get(t)
        if m is None:
            probs = self.counts[t, : self.lengths[t] + 1].astype(np.float64) / TOTAL
            m = self._models[t] = constriction.stream.model.Categorical(probs, perfect=False)
        return m


_RAW = constriction.stream.model.Uniform(2 * RAW_OFFSET)


def _groups(table_idx: np.ndarray):
    """Symbols are coded grouped by table (one vectorised call per table), in raster order within a
    group; the order follows from the table indices alone, which the decoder knows beforehand."""
    order = np.argsort(table_idx, kind="stable")
    t = table_idx[order]
    cuts = np.flatnonzero(np.diff(t)) + 1
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    ends = np.concatenate([cuts, [len(t)]]).astype(np.int64)
    return order, t, starts, ends


def encode_values(values: np.ndarray, table_idx: np.ndarray, tables: SymbolTables) -> bytes:
    values = np.asarray(values, np.int64).ravel()
    table_idx = np.asarray(table_idx, np.int64).ravel()
    if values.size and np.abs(values).max() > VALUE_LIMIT:
        raise ValueError("value outside the coder's range; clamp first")
    order, t, starts, ends = _groups(table_idx)
    v = values[order]
    sym = v - tables.offsets[t]
    escape = (sym < 0) | (sym >= tables.lengths[t])
    sym = np.where(escape, tables.lengths[t], sym).astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    for s, e in zip(starts, ends):
        if e > s:
            enc.encode(sym[s:e], tables.model(int(t[s])))
    if escape.any():
        enc.encode((v[escape] + RAW_OFFSET).astype(np.int32), _RAW)
    return enc.get_compressed().astype("<u4").tobytes()


def decode_values(data: bytes, table_idx: np.ndarray, tables: SymbolTables) -> np.ndarray:
    if len(data) % 4:
        raise SiccError("corrupt layer (length is not a whole number of 32-bit words)")
    shape = np.shape(table_idx)
    table_idx = np.asarray(table_idx, np.int64).ravel()
    order, t, starts, ends = _groups(table_idx)
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    sym = np.empty(len(t), np.int64)
    for s, e in zip(starts, ends):
        if e > s:
            sym[s:e] = dec.decode(tables.model(int(t[s])), int(e - s))
    escape = sym == tables.lengths[t]
    v = sym + tables.offsets[t]
    n_escape = int(escape.sum())
    if n_escape:
        v[escape] = dec.decode(_RAW, n_escape).astype(np.int64) - RAW_OFFSET
    out = np.empty_like(v)
    out[order] = v
    return out.reshape(shape)
