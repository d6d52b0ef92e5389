"""Where a result was computed: the software versions and the host's compute, recorded beside a
study's runs and stages.

Every random choice in this library takes a seed, so a rerun gives the same numbers, bit for
bit, on the same software, kind of CPU and *number of threads*: XLA's CPU backend splits a large
contraction (a weight gradient's sum over batch x tokens) across its threads, so 1 and 2 threads
sum in another order and differ in the last bits, which training then amplifies. `cpu_threads` says how many
threads a run had (`taskset` and container limits lower it).
"""
from __future__ import annotations

import os
import platform

import jax
import jaxlib

from recross_jax import __version__


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_threads() -> int:
    """CPUs this process may run on (its affinity), which sizes XLA's CPU thread pool."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def environment() -> dict:
    """The versions and compute a result came from, as JSON-ready values."""
    return {"recross_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "devices": jax.device_count(),
            "cpu": cpu_model(), "cpu_threads": cpu_threads()}
