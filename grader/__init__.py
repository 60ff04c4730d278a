"""backprop-grader: grading core (engine, specs, trials, comparison) and the service around it (web app, store, worker)."""

import os

__version__ = "0.1.0"

# One grading runs per process, and its arrays are small: a BLAS thread pool only adds
# threads that spin-wait for work after every matmul. On a 2-core worker they doubled the
# CPU time of the vjp reference for no gain in wall time, and took the CPU from the other
# grading process. Set before NumPy is imported (every entry point imports this package
# first); an operator's own setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
del _var
