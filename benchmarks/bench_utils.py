"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which puts this folder
on the import path)."""

from __future__ import annotations

import resource

__all__ = ["peak_rss_mib", "print_environment"]


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB); it only grows."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_environment() -> None:
    """The machine first (``environment: {...}``, the fields of a run's environment.json): a speed figure means
    nothing without the CPU, its flags and the versions that made it."""
    import json

    from gpfuse.utils.environment import describe

    print(f"environment: {json.dumps(describe())}", flush=True)
