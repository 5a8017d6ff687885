"""Process-wide allocator settings for the `sicc` command.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it
on free, so each full-resolution activation of a transform (tens of MB) is page-faulted in again, 4 KiB
at a time, on every layer of every image. That cost more than the arithmetic: an element-wise op on a
96 x 256 x 384 activation took 26-34 ms instead of 4-7 ms (session 9, AMD EPYC, one thread). Reusing the
heap took a Kodak decode from 0.87 to 0.73 s, an encode from 0.94 to 0.76 s and 12 training steps from
22.8 to 19.9 s. Without mmap the heap takes a few images to settle (torch's aligned blocks do not fit a
freed block of their own size until its neighbours coalesce); from then on a decode page-faults nothing,
for about 7 % more peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free heap kept for reuse instead of being returned to the OS (peak RSS measured: a Kodak decode 0.9 GB,
# default-recipe training 2.1 GB).
_KEEP_BYTES = 2**30


def is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep up to 1 GiB of freed heap, so big tensors reuse pages
    already mapped. Affects the whole process (the CLI calls it; library users may). Returns whether
    it applied: only on glibc, elsewhere it changes nothing."""
    if not is_glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):
        return False
