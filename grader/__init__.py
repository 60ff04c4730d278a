"""backprop-grader: grading core (engine, specs, trials, comparison) and the service around it (web app, store, worker)."""

from grader.process_tuning import tune as _tune

__version__ = "0.1.0"

_tune()  # before anything imports NumPy: see grader/process_tuning.py
