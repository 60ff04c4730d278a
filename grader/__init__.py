"""backprop-grader: grading core (engine, specs, trials, comparison) and, later, the service around it."""

__version__ = "0.1.0"
