"""`cpu_allocator_cache`: glibc malloc keeps freed blocks for the next step (perf auto on CPU).

glibc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh mmap and
gives it back with munmap when freed. A CPU training step allocates and frees tensors far larger than that
(the CPU benchmark's shape, bench/sft_throughput.py --shape cpu: [2850, 8192] fp32 logits, 93 MB, a few per
step), so every step the kernel maps and zero-fills them again: ~97 k page faults per 3.9 k-token step. With
mmap off and the heap's top never trimmed, freed blocks are reused as CUDA's caching allocator reuses device
memory (≤ 5.8 k faults per step; 1.12× full SFT and 1.15× LoRA tokens/s, bench/lever_ab.py, each arm its own
process). The cost is the same as there: the process keeps its peak heap (+12–16 % there) instead of
returning it to the OS between steps.
No library offers this for a CPU training process without preloading another malloc (jemalloc, tcmalloc),
which a launch on someone's cluster cannot assume is installed; hence these few lines.

The switches are glibc's `mallopt(3)` parameters (values from <malloc.h>); other C libraries, or a
jemalloc/tcmalloc preloaded in glibc's place, ignore them or are not touched.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int: keep up to 2 GiB of free heap top


def glibc() -> bool:
    """True when this process's C library is glibc (the only one whose mallopt these values mean)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):
        return False


def _mallopt(param: int, value: int) -> bool:
    return bool(ctypes.CDLL(None).mallopt(param, value))


def keep_freed_blocks() -> bool:
    """Serve large blocks from the heap and never trim it: freed tensors are reused by later steps.
    Returns False (nothing changed) where the C library is not glibc."""
    return glibc() and _mallopt(M_MMAP_MAX, 0) and _mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
