"""recross-jax: unsupervised cross-task generalization (ReCross, TaskShop, ELM) in JAX/Flax."""

__version__ = "0.1.0"
