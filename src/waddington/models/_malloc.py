"""Keep freed memory in the process heap while a training loop runs (glibc only; a no-op elsewhere).

A training step of LSD allocates and frees several tensors of a few MiB (cells × genes) each. With glibc's
default, adaptive settings the heap is trimmed back to the operating system whenever more than twice the largest
recently freed block sits unused at its top, so every step maps those pages again and takes thousands of page
faults (5,000–8,000 per step at 2,000 cells × 500 genes, about 8 % of the step on a 2-core VM). Raising the trim
threshold for the duration of the loop removes them; the peak resident memory is unchanged (it is reached within
the first step either way).

glibc has no call that returns to its adaptive mode, so on exit the thresholds are set to the values that mode
converges to on 64-bit systems (blocks of up to 32 MiB come from the heap, which is trimmed above 64 MiB of free
space) and ``malloc_trim(0)`` hands the memory the loop kept back to the system. Set the environment variable
``WADDINGTON_NO_MALLOPT=1`` to leave the allocator alone. (Written by hand: no maintained Python package exposes
``mallopt``; it is two ``ctypes`` calls.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from contextlib import contextmanager

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MIB = 1 << 20
#: thresholds while training: blocks up to 64 MiB from the heap, trim only above 1 GiB of free space
TRAINING = {"mmap": 64 * _MIB, "trim": 1024 * _MIB}
#: thresholds restored afterwards: where glibc's adaptive mode ends up on 64-bit systems
RESTORED = {"mmap": 32 * _MIB, "trim": 64 * _MIB}


def _glibc():
    if not sys.platform.startswith("linux") or os.environ.get("WADDINGTON_NO_MALLOPT"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        get_version = libc.gnu_get_libc_version  # absent outside glibc (e.g. musl)
        get_version.restype = ctypes.c_char_p
        return libc if get_version() else None
    except (OSError, AttributeError):
        return None


def _set(libc, values: dict[str, int]) -> bool:
    ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(values["mmap"]))
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(values["trim"]))
    return bool(ok)


@contextmanager
def retain_freed_memory():
    """Context manager: raise glibc's heap trim threshold inside, restore saturated adaptive values on exit."""
    libc = _glibc()
    if libc is None:
        yield
        return
    applied = _set(libc, TRAINING)
    if not applied:
        logger.debug("mallopt not applied; training runs with the allocator's defaults")
    try:
        yield
    finally:
        if applied:
            _set(libc, RESTORED)
            libc.malloc_trim(ctypes.c_size_t(0))
