"""Run a fully convolutional transform over a large image in overlapping tiles, with bounded memory.

Each tile is computed with a margin of context on every side and only its centre is kept, so with a
margin wider than the transform's receptive field the result equals the whole-image result.
"""

from __future__ import annotations

from typing import Callable

import torch


def apply_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, up: int, down: int, tile: int,
                margin: int) -> torch.Tensor:
    """fn maps [1, C, H, W] to [1, C', H*up/down, W*up/down]. `tile` and `margin` are in input
    pixels and must be multiples of `down`; tiles are `tile` square (the last ones smaller)."""
    _, _, H, W = x.shape
    if H <= tile + margin and W <= tile + margin:
        return fn(x)
    out = None
    for top in range(0, H, tile):
        for left in range(0, W, tile):
            t0, l0 = max(0, top - margin), max(0, left - margin)
            t1, l1 = min(H, top + tile + margin), min(W, left + tile + margin)
            y = fn(x[:, :, t0:t1, l0:l1])
            h, w = min(tile, H - top), min(tile, W - left)
            dy, dx = (top - t0) * up // down, (left - l0) * up // down
            centre = y[:, :, dy : dy + h * up // down, dx : dx + w * up // down]
            if out is None:
                out = y.new_empty((1, y.shape[1], H * up // down, W * up // down))
            out[:, :, top * up // down : (top + h) * up // down, left * up // down : (left + w) * up // down] = centre
    return out
