"""The host record written beside every study run and stage."""
import json
import os

import jax
import pytest

from recross_jax import __version__, provenance


def test_environment_names_versions_backend_and_threads():
    env = provenance.environment()
    assert env["recross_jax"] == __version__ and env["jax"] == jax.__version__
    assert env["backend"] == jax.default_backend() and env["devices"] == jax.device_count()
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert json.loads(json.dumps(env)) == env  # goes into run JSON as it is


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_cpu_threads_follow_the_process_affinity():
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert provenance.cpu_threads() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert provenance.cpu_threads() == len(allowed)
