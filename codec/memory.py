"""Process-wide allocator settings for the `sicc` command.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it
on free, so each full-resolution activation of a transform (tens of MB) is page-faulted in again, 4 KiB
at a time, on every layer of every image. That cost more than the arithmetic: an element-wise op on a
96 x 256 x 384 activation took 26-34 ms instead of 4-7 ms (session 9, AMD EPYC, one thread). Reusing the
heap took a Kodak decode from 0.87 to 0.73 s, an encode from 0.94 to 0.76 s and 12 training steps from
22.8 to 19.9 s. Without mmap the heap takes a few images to settle (torch's aligned blocks do not fit a
freed block of their own size until its neighbours coalesce); from then on a decode page-faults nothing,
for about 7 % more peak memory on Kodak-sized images. Large images give the heap up again
(`prepare_for_image`): there it cost a third more memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# Free heap kept for reuse instead of being returned to the OS (peak RSS measured: a Kodak decode 0.9 GB,
# default-recipe training 2.1 GB).
_KEEP_BYTES = 2**30
# Past this many pixels the heap is given up: an image's whole-size buffers (hundreds of MB each) leave
# holes that the tiles' activations do not fill, and the heap only grows. A 6000x4000 encode peaked at
# 3.56 GiB with the heap and 2.69 GiB without, 25 % slower (session 22, the library call on one thread).
LARGE_IMAGE_PIXELS = 16_000_000
# glibc's defaults for the blocks mmap serves, restored for large images (32 MiB: the highest threshold
# glibc's own sliding threshold reaches)
_MMAP_MAX_DEFAULT = 65536
_MMAP_THRESHOLD_LARGE = 32 * 2**20
_TRIM_THRESHOLD_DEFAULT = 128 * 2**10

_libc = None
_reusing = False  # reuse_freed_memory holds


def _glibc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc


def is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep up to 1 GiB of freed heap, so big tensors reuse pages
    already mapped. Affects the whole process (the CLI calls it; library users may). Returns whether
    it applied: only on glibc, elsewhere it changes nothing."""
    global _reusing
    if not is_glibc():
        return False
    try:
        libc = _glibc()
        _reusing = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):
        return False
    return _reusing


def prepare_for_image(pixels: int) -> None:
    """Called before an image of `pixels` is coded: past LARGE_IMAGE_PIXELS, while `reuse_freed_memory`
    holds, large blocks are mapped and unmapped again and the kept heap is handed back, for the rest of
    the process (bounded memory matters more than speed there)."""
    global _reusing
    if not _reusing or pixels <= LARGE_IMAGE_PIXELS:
        return
    libc = _glibc()
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_LARGE)
    libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_DEFAULT)
    libc.malloc_trim(0)
    _reusing = False
