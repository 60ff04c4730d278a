"""The grader's processes keep NumPy's BLAS to one thread and its arrays in warm heap pages
(grader/process_tuning.py says why).

OpenBLAS starts its pool when NumPy is imported, so the setting must be in place before
that, in every entry point: the package itself sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


COUNT = "import os, numpy; numpy.ones((64, 64)) @ numpy.ones((64, 64)); print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'))"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a one-core machine starts no BLAS threads either way")
def test_numpy_alone_starts_blas_threads_here() -> None:
    # The control: without the package, this machine's NumPy does start a pool, so the
    # next test would fail if the package stopped setting the variable.
    threads, _ = _run_python(COUNT).split()
    assert int(threads) > 1


@pytest.mark.parametrize("entry", ["grader", "grader.grade", "worker.tasks", "grader.web"])
def test_every_entry_point_keeps_blas_to_one_thread(entry: str) -> None:
    threads, setting = _run_python(f"import {entry}; " + COUNT).split()
    assert (int(threads), setting) == (1, "1")


def test_an_operators_setting_wins() -> None:
    _, setting = _run_python("import grader; " + COUNT, OPENBLAS_NUM_THREADS="2").split()
    assert setting == "2"


FAULTS = """
import resource, sys
from grader.spec.load import load_builtin
from grader.trials import make_trials
a = load_builtin("vjp")
for seed in range(3):
    [make_trials(a, fn, seed) for fn in a.functions]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for seed in range(100, 110):
    [make_trials(a, fn, seed) for fn in a.functions]
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def test_reference_arrays_reuse_warm_heap_pages() -> None:
    # Without the malloc settings, each vjp reference faulted about 475 pages in again
    # (its 160-300 KiB temporaries were mapped and unmapped one by one).
    assert float(_run_python(FAULTS)) < 100


def test_an_operators_malloc_setting_wins() -> None:
    # glibc reads MALLOC_MMAP_THRESHOLD_ at start-up; the package must not override it.
    faults = float(_run_python(FAULTS, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072"))
    assert faults > 100
