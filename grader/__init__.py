"""backprop-grader: grading core (engine, specs, trials, comparison) and the service around it (web app, store, worker)."""

__version__ = "0.1.0"
