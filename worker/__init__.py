"""The Celery worker: a thin shell that claims a submission row, runs the grading core on
it in the sandbox, and writes the result while it holds the row's lease."""
