"""Hostile: a fork bomb while it is loaded. Only for the sandbox (seccomp refuses fork);
the benchmarks never give it to the fresh-interpreter baseline."""
import os

while True:
    os.fork()
