"""Pure Flax networks: no data, no files."""
from recross_jax.models.t5 import T5Config, Transformer

__all__ = ["T5Config", "Transformer"]
