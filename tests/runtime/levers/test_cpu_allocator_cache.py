"""`cpu_allocator_cache` (runtime/levers/cpu_allocator_cache.py): freed large tensors are reused, not
page-faulted again.

Each case runs in its own process: glibc's malloc settings are process-wide and would stay with pytest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.levers.cpu_allocator_cache import glibc

pytestmark = pytest.mark.skipif(not glibc(), reason="mallopt's parameters are glibc's")

# A step's worth of large tensors (64, 16 and 40 MiB: written, read, freed), six times; print the fewest
# page faults of any round after the first (a fragmented heap may still grow in an odd round).
FAULTS = """
import resource, sys, torch
from runtime.levers.cpu_allocator_cache import keep_freed_blocks
if sys.argv[1] == "keep":
    assert keep_freed_blocks()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(n * 2**18).fill_(1.0) for n in (64, 16, 40)]
    assert sum(t.sum() for t in tensors).item() == 120 * 2**18
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""
PAGES_PER_ROUND = 120 * 2**20 // 4096  # 30720 pages of 4 KiB: every one faults when the blocks are fresh


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def test_freed_blocks_are_reused_instead_of_faulted_again() -> None:
    pytest.importorskip("torch")
    default, kept = _faults("default"), _faults("keep")
    assert default >= PAGES_PER_ROUND // 2, default  # every round: glibc unmaps the blocks, maps fresh ones
    assert kept < PAGES_PER_ROUND // 16, kept  # the same heap blocks again: (almost) no new page
