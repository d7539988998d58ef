"""Keep freed memory in the ``zoo`` process instead of handing it back to the kernel.

glibc's malloc serves blocks above its mmap threshold with fresh mappings and returns freed memory at the top of
its heap to the kernel once more than its trim threshold is free. A network allocates and frees the same
megabyte-sized activations on every block, pass and step, so with the defaults the kernel maps the same pages in
again and again: measured, about a tenth of a full-size SAM-UNet training step went to those page faults, and a
few percent of an encoder's time (``benchmarks/encoder_speed.py --keep-freed-memory`` compares).

The ``zoo`` console script raises both at start-up (:func:`keep_freed_memory`): what a process frees stays
reserved for its next allocations, as jemalloc or tcmalloc would keep it; peak memory does not grow (the same
blocks are reused). Only the console script does this: importing ``zoo`` leaves the allocator of a notebook or
another program as it is. ``GLIBC_TUNABLES`` with malloc settings, or ``ZOO_MALLOC_DEFAULTS=1``, leaves glibc's
settings alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

TRIM_THRESHOLD = 256 * 2**20  # free bytes at the heap's top before glibc returns them to the kernel
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks above it are still mapped and unmapped on their own
M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
OPT_OUT_ENV = "ZOO_MALLOC_DEFAULTS"


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; whether they were set (False under another C
    library, where ``GLIBC_TUNABLES`` already sets malloc's, or where ``ZOO_MALLOC_DEFAULTS`` opts out)."""
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
