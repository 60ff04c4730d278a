"""Process-wide settings for the grader's own processes, applied when the package is imported.

Grading is many NumPy operations on small and medium arrays, one grading at a time per
process, on machines with few cores. Two library defaults cost CPU there for nothing:

- OpenBLAS starts a thread pool whose threads spin after every matmul. On a 2-core worker
  they doubled the CPU time of the vjp reference, for no gain in wall time, and took that
  CPU from the other grading process. It reads its setting when NumPy is imported, so this
  must run first (every entry point imports this package before NumPy).
- glibc serves every allocation above 128 KiB with a fresh mmap and returns it on free, so
  each temporary of a vjp trial (arrays of 160-300 KiB) faulted its pages in again: about
  15% of the vjp reference's CPU. Keeping such blocks in the heap reuses warm pages.

An operator's own environment settings win over both.
"""

from __future__ import annotations

import ctypes
import os

BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
MMAP_THRESHOLD = 4 << 20  # allocations above it still get their own mapping
TRIM_THRESHOLD = 32 << 20  # free heap kept before it is returned to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def tune() -> None:
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its allocator has its own defaults
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
