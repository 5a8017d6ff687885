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
CHUNK = 1 << 20  # elements per vectorised piece: bounds the temporaries on large images


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
        self._choices: dict[int, PlaneChoices] = {}

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

    def choices(self, plane: int) -> "PlaneChoices":
        """Plane `plane`'s choice for every interval an element can be in (built on first use)."""
        if plane not in self._choices:
            self._choices[plane] = PlaneChoices.build(self, plane)
        return self._choices[plane]

    def mean(self, t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The table's mean value over a..b (float64; a ratio of integers, so platform-independent)."""
        ia, ib = self._bounds(t, a, b)
        w = self.cum[t, ib] - self.cum[t, ia]
        s = self.cum_v[t, ib] - self.cum_v[t, ia]
        return np.where(w > 0, s / np.maximum(w, 1), (a + b) / 2)


@dataclass(frozen=True)
class PlaneChoices:
    """One plane's choices, tabulated: an element of table t whose interval (width 3^m) starts at
    a = -h_t + j * 3^m reads row base[t] + j. Coding a plane is then a lookup per element instead of
    three interval sums; the table has at most h_t rows per table, fewer than the counts themselves."""

    base: np.ndarray  # int64 [T]
    probs: np.ndarray  # float32 [R, 4]: the choice probabilities, as docs/format.md defines them
    only: np.ndarray  # int64 [R]: the one possible choice (not coded), or -1 where there is a choice

    @classmethod
    def build(cls, model: PlaneModel, plane: int) -> "PlaneChoices":
        w, third = 3**plane, 3 ** (plane - 1)
        n = np.where(model.planes >= plane, 3 ** np.maximum(model.planes - plane, 0), 0)
        base = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        t = np.repeat(np.arange(len(n)), n)
        a = -model.half[t] + (np.arange(t.size) - base[t]) * w
        weights = np.stack([model.weight(t, a + i * third, a + (i + 1) * third - 1) for i in range(3)]
                           + [np.where(model.planes[t] == plane, model.escape[t], 0)], 1)
        total = weights.sum(1, keepdims=True)
        # rows no element can reach (wholly outside the table) have no weight; they are never read
        probs = (weights / np.maximum(total, 1)).astype(np.float32)
        possible = weights > 0
        return cls(base, probs, np.where(possible.sum(1) == 1, np.argmax(possible, 1), -1))


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


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The chunks' int64 pieces end to end (none: empty)."""
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


class PlaneState:
    """Every element's current interval [a, b]; escaped elements hold their value in both."""

    def __init__(self, model: PlaneModel, table_idx: np.ndarray):
        self.model = model
        self.t = np.asarray(table_idx, np.int64).ravel()
        self.a = -model.half[self.t]
        self.b = model.half[self.t].copy()
        self.escaped = np.zeros(self.t.size, bool)

    def _selected(self, step: PlaneStep) -> np.ndarray:
        """The elements a step codes, in raster order."""
        t = self.t
        return np.flatnonzero((self.model.planes[t] >= step.plane) & (t >= step.t_min) & (t <= step.t_max)
                              & ~self.escaped)

    def _coded(self, sel: np.ndarray, step: PlaneStep):
        """Of the elements `sel`, those whose choice needs bits, with the choice probabilities (float32
        [n, 4]); forced choices are applied in place."""
        mdl = self.model
        ts = self.t[sel]
        table = mdl.choices(step.plane)
        row = table.base[ts] + (self.a[sel] + mdl.half[ts]) // 3**step.plane
        only = table.only[row]
        forced = only >= 0
        # a forced choice needs no bits (always a third: an escape is never the only option)
        self._apply(sel[forced], only[forced], 3 ** (step.plane - 1))
        return sel[~forced], table.probs[row[~forced]]

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
        """Narrow every interval by this layer's choices for `values` (coding them into `enc`, if given).
        A step's choices go in chunks (bounded memory on large images; the stream is the same), then its
        escaped values."""
        for step in layer:
            w = 3 ** (step.plane - 1)
            selected = self._selected(step)
            escaped, escaped_values = [], []
            for start in range(0, selected.size, CHUNK):
                sel, probs = self._coded(selected[start : start + CHUNK], step)
                v = values[sel]
                escape = (v < self.model.lo[self.t[sel]]) | (v > self.model.hi[self.t[sel]])
                choice = np.where(escape, ESCAPE, (v - self.a[sel]) // w).astype(np.int32)
                if enc is not None and sel.size:
                    enc.encode(choice, _FAMILY, probs)
                self._apply(sel, choice, w)
                escaped.append(sel[escape])
                escaped_values.append(v[escape])
            escaped, escaped_values = _joined(escaped), _joined(escaped_values)
            if enc is not None and escaped.size:
                enc.encode((escaped_values + RAW_OFFSET).astype(np.int32), _RAW)
            self.a[escaped] = self.b[escaped] = escaped_values

    def decode_layer(self, data: bytes, layer: Layer):
        if len(data) % 4:
            raise SiccError("corrupt layer (length is not a whole number of 32-bit words)")
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        for step in layer:
            w = 3 ** (step.plane - 1)
            selected = self._selected(step)
            escaped = []
            for start in range(0, selected.size, CHUNK):
                sel, probs = self._coded(selected[start : start + CHUNK], step)
                choice = dec.decode(_FAMILY, probs).astype(np.int64) if sel.size else np.zeros(0, np.int64)
                self._apply(sel, choice, w)
                escaped.append(sel[choice == ESCAPE])
            escaped = _joined(escaped)
            if escaped.size:
                v = dec.decode(_RAW, int(escaped.size)).astype(np.int64) - RAW_OFFSET
                self.a[escaped] = self.b[escaped] = v

    def expected(self) -> np.ndarray:
        """Each element's mean value under its table restricted to its interval (float64)."""
        out = np.empty(self.t.size)
        for start in range(0, self.t.size, CHUNK):
            part = slice(start, start + CHUNK)
            a, b = self.a[part], self.b[part]
            out[part] = np.where(a == b, a, self.model.mean(self.t[part], a, b))
        return out

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A draw of every value from its table restricted to its interval (int64): any such draw
        re-encodes to the same layers."""
        mdl = self.model
        # one search over all tables' cumulative counts laid end to end
        stride = int(mdl.cum[:, -1].max()) + 1
        flat = (mdl.cum + np.arange(len(mdl.cum))[:, None] * stride).ravel()
        out = np.empty(self.t.size, np.int64)
        for begin in range(0, self.t.size, CHUNK):
            part = slice(begin, begin + CHUNK)
            t, a, b = self.t[part], self.a[part], self.b[part]
            ia, ib = mdl._bounds(t, a, b)
            start, w = mdl.cum[t, ia], mdl.cum[t, ib] - mdl.cum[t, ia]
            target = start + np.floor(rng.random(t.size) * w).astype(np.int64)
            j = np.searchsorted(flat, target + t * stride, side="right") - 1 - t * mdl.cum.shape[1]
            drawn = mdl.lo[t] + np.clip(j, 0, mdl.length[t] - 1)
            out[part] = np.where((a == b) | (w == 0), a, drawn)
        return out


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
