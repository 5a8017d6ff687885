"""Trit-plane coding of integer symbols: every value is sent as a sequence of ternary choices, coarse
to fine, so any prefix of the planes narrows every value to an interval.

Knows nothing of networks. A value v with probability table t (entropy.SymbolTables, integer counts)
starts in the interval [-h_t, h_t], h_t = (3^n_t - 1) / 2 the smallest such half-width that covers
the table; plane m (width 3^m -> 3^(m-1)) tells which third holds v. The thirds are weighted by the
table's counts inside them (integers, so encoder and decoder compute bit-identical probabilities on
every platform); a value outside the table is an escape, a fourth choice at the element's first
plane, and follows as a raw 16-bit number. Choices with one possible outcome are not coded.

Planes are coded coarsest first (global plane index m, the same grid for every element, as in DPICT,
Lee et al. 2022), and a plane is cut into layers by table index, widest tables first: the bits that
shrink the largest uncertainties come first.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from .entropy import RAW_OFFSET, SymbolTables
from .errors import SiccError

_FAMILY = constriction.stream.model.Categorical(perfect=False)
_RAW = constriction.stream.model.Uniform(2 * RAW_OFFSET)
ESCAPE = 3


@dataclass(frozen=True)
class PlaneStep:
    """Plane m's choices for the elements whose table index lies in [t_min, t_max]."""

    plane: int
    t_min: int
    t_max: int


Layer = tuple[PlaneStep, ...]  # the steps one payload codes, in order


class PlaneModel:
    """Per-table quantities that both coder directions derive from the integer counts alone."""

    def __init__(self, tables: SymbolTables):
        self.tables = tables
        lengths = tables.lengths.astype(np.int64)
        self.lo = tables.offsets.astype(np.int64)
        self.hi = self.lo + lengths - 1
        reach = np.maximum(np.abs(self.lo), np.abs(self.hi))
        self.planes = np.zeros(len(lengths), np.int64)  # n_t
        while np.any((3 ** self.planes - 1) // 2 < reach):
            self.planes += (3 ** self.planes - 1) // 2 < reach
        self.half = (3 ** self.planes - 1) // 2
        T, L = tables.counts.shape
        counts = np.zeros((T, L), np.int64)
        for t in range(T):
            counts[t, : lengths[t]] = tables.counts[t, : lengths[t]]
        self.escape = tables.counts[np.arange(T), lengths].astype(np.int64)
        self.length = lengths
        values = self.lo[:, None] + np.arange(L)[None, :]
        # prefix sums of the in-table counts and of value * count: interval weights and means
        self.cum = np.concatenate([np.zeros((T, 1), np.int64), np.cumsum(counts, 1)], 1)
        self.cum_v = np.concatenate([np.zeros((T, 1), np.int64), np.cumsum(counts * values, 1)], 1)

    @property
    def max_plane(self) -> int:
        return int(self.planes.max())

    def _bounds(self, t, a, b):
        ia = np.clip(a - self.lo[t], 0, self.length[t])
        ib = np.clip(b - self.lo[t] + 1, 0, self.length[t])
        return ia, np.maximum(ib, ia)

    def weight(self, t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Sum of table t's counts over the values a..b (inclusive) inside the table."""
        ia, ib = self._bounds(t, a, b)
        return self.cum[t, ib] - self.cum[t, ia]

    def mean(self, t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The table's mean value over a..b (float64; a ratio of integers, so platform-independent)."""
        ia, ib = self._bounds(t, a, b)
        w = self.cum[t, ib] - self.cum[t, ia]
        s = self.cum_v[t, ib] - self.cum_v[t, ia]
        return np.where(w > 0, s / np.maximum(w, 1), (a + b) / 2)


def plane_schedule(model: PlaneModel, cuts: dict[int, tuple[int, ...]]) -> list[Layer]:
    """Layers, coarsest plane first. Planes not in `cuts` join the layer of the next finer plane
    (planes above the first cut are cheap); plane m in `cuts` makes one layer per table-index range
    [cut_i, cut_(i-1) - 1], widest tables first (cuts descending, ending at 0)."""
    T = len(model.planes)
    layers, pending = [], []
    for m in range(model.max_plane, 0, -1):
        if m not in cuts:
            pending.append(PlaneStep(m, 0, T - 1))
            continue
        upper = T
        for c in cuts[m]:
            layers.append(tuple(pending) + (PlaneStep(m, c, upper - 1),))
            pending, upper = [], c
    if pending:
        layers.append(tuple(pending))
    return layers


class PlaneState:
    """Every element's current interval [a, b]; escaped elements hold their value in both."""

    def __init__(self, model: PlaneModel, table_idx: np.ndarray):
        self.model = model
        self.t = np.asarray(table_idx, np.int64).ravel()
        self.a = -model.half[self.t]
        self.b = model.half[self.t].copy()
        self.escaped = np.zeros(self.t.size, bool)

    def _step(self, layer: PlaneStep):
        """The elements this layer refines and their choice probabilities (float32 [n, 4]); elements
        whose choice is forced are refined in place and not returned."""
        mdl, t = self.model, self.t
        sel = np.flatnonzero((mdl.planes[t] >= layer.plane) & (t >= layer.t_min) & (t <= layer.t_max) & ~self.escaped)
        ts, a = t[sel], self.a[sel]
        w = 3 ** (layer.plane - 1)
        weights = np.stack([mdl.weight(ts, a + i * w, a + (i + 1) * w - 1) for i in range(3)]
                           + [np.where(mdl.planes[ts] == layer.plane, mdl.escape[ts], 0)], 1)
        forced = (weights > 0).sum(1) == 1
        # a forced choice needs no bits (always a third: an escape is never the only option)
        choice = np.argmax(weights[forced] > 0, 1)
        self._apply(sel[forced], choice, w)
        sel, weights = sel[~forced], weights[~forced]
        probs = (weights / weights.sum(1, keepdims=True)).astype(np.float32)
        return sel, probs, w

    def _apply(self, sel: np.ndarray, choice: np.ndarray, w: int):
        thirds = choice < ESCAPE
        s = sel[thirds]
        self.a[s] = self.a[s] + choice[thirds] * w
        self.b[s] = self.a[s] + w - 1
        self.escaped[sel[~thirds]] = True

    def encode_layer(self, values: np.ndarray, layer: Layer) -> bytes:
        enc = constriction.stream.queue.RangeEncoder()
        self.advance(values, layer, enc)
        return enc.get_compressed().astype("<u4").tobytes()

    def advance(self, values: np.ndarray, layer: Layer, enc=None):
        """Narrow every interval by this layer's choices for `values` (coding them into `enc`, if given)."""
        for step in layer:
            sel, probs, w = self._step(step)
            v = values[sel]
            escape = (v < self.model.lo[self.t[sel]]) | (v > self.model.hi[self.t[sel]])
            choice = np.where(escape, ESCAPE, (v - self.a[sel]) // w).astype(np.int32)
            if enc is not None and sel.size:
                enc.encode(choice, _FAMILY, probs)
            if enc is not None and escape.any():
                enc.encode((v[escape] + RAW_OFFSET).astype(np.int32), _RAW)
            self._apply(sel, choice, w)
            self.a[sel[escape]] = self.b[sel[escape]] = v[escape]

    def decode_layer(self, data: bytes, layer: Layer):
        if len(data) % 4:
            raise SiccError("corrupt layer (length is not a whole number of 32-bit words)")
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        for step in layer:
            sel, probs, w = self._step(step)
            choice = dec.decode(_FAMILY, probs).astype(np.int64) if sel.size else np.zeros(0, np.int64)
            self._apply(sel, choice, w)
            escape = sel[choice == ESCAPE]
            if escape.size:
                v = dec.decode(_RAW, int(escape.size)).astype(np.int64) - RAW_OFFSET
                self.a[escape] = self.b[escape] = v

    def expected(self) -> np.ndarray:
        """Each element's mean value under its table restricted to its interval (float64)."""
        exact = self.a == self.b
        return np.where(exact, self.a, self.model.mean(self.t, self.a, self.b))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A draw of every value from its table restricted to its interval (int64): any such draw
        re-encodes to the same layers."""
        mdl, t = self.model, self.t
        ia, ib = mdl._bounds(t, self.a, self.b)
        start, w = mdl.cum[t, ia], mdl.cum[t, ib] - mdl.cum[t, ia]
        target = start + np.floor(rng.random(t.size) * w).astype(np.int64)
        # one search over all tables' cumulative counts laid end to end
        stride = int(mdl.cum[:, -1].max()) + 1
        flat = (mdl.cum + np.arange(len(mdl.cum))[:, None] * stride).ravel()
        j = np.searchsorted(flat, target + t * stride, side="right") - 1 - t * mdl.cum.shape[1]
        drawn = mdl.lo[t] + np.clip(j, 0, mdl.length[t] - 1)
        return np.where((self.a == self.b) | (w == 0), self.a, drawn)


def encode_planes(values: np.ndarray, table_idx: np.ndarray, model: PlaneModel,
                  schedule: list[Layer]) -> list[bytes]:
    """Integer values (|v| < 2^15) with a table index each -> one payload per layer of `schedule`."""
    values = np.asarray(values, np.int64).ravel()
    if values.size and np.abs(values).max() >= RAW_OFFSET:
        raise ValueError("value outside the coder's range; clamp first")
    state = PlaneState(model, table_idx)
    return [state.encode_layer(values, layer) for layer in schedule]


def decode_planes(payloads: list[bytes], table_idx: np.ndarray, model: PlaneModel,
                  schedule: list[Layer]) -> PlaneState:
    """Payloads of the first len(payloads) layers of `schedule` -> every element's interval."""
    if len(payloads) > len(schedule):
        raise SiccError(f"{len(payloads)} plane layers, the schedule has {len(schedule)}")
    state = PlaneState(model, table_idx)
    for data, layer in zip(payloads, schedule):
        state.decode_layer(data, layer)
    return state
