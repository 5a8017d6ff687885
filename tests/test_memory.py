import subprocess
import sys

import pytest

from codec.memory import is_glibc

# Allocate, touch and free a 64 MiB tensor many times (the heap takes up to ~10 rounds to settle: torch's aligned
# allocations do not fit a freed block of their own size until neighbours coalesce); print
# the page faults of the last round.
_PROBE = """
import resource
import sys
import torch
from codec.memory import prepare_for_image, reuse_freed_memory
applied = reuse_freed_memory()
prepare_for_image(int(sys.argv[1]))
for _ in range(32):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(2**24); del a
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _last_round_faults(pixels: int = 768 * 512) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(pixels)], capture_output=True, text=True,
                         check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not is_glibc(), reason="glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    # Without it glibc unmaps the block on free and every 4 KiB page faults in again (16 385 faults here).
    applied, faults = _last_round_faults()
    assert applied == "True"
    assert faults < 2**26 // 4096 // 10


@pytest.mark.skipif(not is_glibc(), reason="glibc only")
def test_a_large_image_gives_the_heap_up_so_its_buffers_return_to_the_os():
    from codec.memory import LARGE_IMAGE_PIXELS

    assert _last_round_faults(LARGE_IMAGE_PIXELS)[1] < 2**26 // 4096 // 10  # at the limit: still reused
    # past it, each 64 MiB block is mapped and unmapped again, every page faulting in
    assert _last_round_faults(LARGE_IMAGE_PIXELS + 1)[1] > 2**26 // 4096 // 2
