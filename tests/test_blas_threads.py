"""The grader's processes keep NumPy's BLAS to one thread.

A BLAS thread pool spins after every matmul: on a 2-core worker it doubled the CPU time
of the vjp reference and took that CPU from the other grading process (see
benchmarks/RESULTS.md). OpenBLAS starts its pool when NumPy is imported, so the setting
must be in place before that, in every entry point: the package itself sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _threads_after(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


COUNT = "import os, numpy; numpy.ones((64, 64)) @ numpy.ones((64, 64)); print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'))"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a one-core machine starts no BLAS threads either way")
def test_numpy_alone_starts_blas_threads_here() -> None:
    # The control: without the package, this machine's NumPy does start a pool, so the
    # next test would fail if the package stopped setting the variable.
    threads, _ = _threads_after(COUNT).split()
    assert int(threads) > 1


@pytest.mark.parametrize("entry", ["grader", "grader.grade", "worker.tasks", "grader.web"])
def test_every_entry_point_keeps_blas_to_one_thread(entry: str) -> None:
    threads, setting = _threads_after(f"import {entry}; " + COUNT).split()
    assert (int(threads), setting) == (1, "1")


def test_an_operators_setting_wins() -> None:
    _, setting = _threads_after("import grader; " + COUNT, OPENBLAS_NUM_THREADS="2").split()
    assert setting == "2"
