"""Test-wide setup: 8 simulated CPU devices (set before JAX is imported), quiet TensorFlow, and
no persistent compilation cache."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests compile from scratch and leave nothing in the user's cache (see test_cli for the cache).
os.environ.setdefault("RECROSS_COMPILATION_CACHE", "off")

import gin  # noqa: E402  (after the environment above)
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Each test ends with gin's bindings cleared and its config unlocked (a CLI run finalizes
    it, after which registering a configurable, e.g. by importing a tasks module, would fail)."""
    yield
    gin.clear_config()
