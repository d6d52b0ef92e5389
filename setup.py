"""recross-jax: unsupervised cross-task generalization in JAX/Flax."""
import re

from setuptools import find_packages, setup

# The one place the version is written is the package itself (also `recross --version`).
with open("recross_jax/__init__.py", encoding="utf-8") as init_file:
    VERSION = re.search(r'^__version__ = "([^"]+)"', init_file.read(), re.MULTILINE).group(1)

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "gin-config==0.5.0",
    "numpy>=2.0,<2.3",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "tqdm>=4.66",
    "filelock>=3.12",  # JAX's compilation cache locks with it when it evicts
    "matplotlib==3.11.2",
    "tensorflow==2.20.0",
    "tensorflow-text==2.20.*",
    "seqio==0.0.20",
    "scann==1.4.2",
    "pandas>=2.0",
    "jinja2>=3.0",
    "pyyaml>=6.0",
]

EXTRAS = {
    "test": [
        "pytest>=8.0",
        "pytest-timeout>=2.3",
        "torch==2.13.0",
        "transformers==5.23.0",
        "faiss-cpu==1.15.1",
        "rouge-score==0.1.2",
        "ruff==0.17.6",
        # executing notebooks/ headless (tests/test_notebook.py)
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
    "datasets": ["datasets==5.2.0"],
}

setup(
    name="recross-jax",
    version=VERSION,
    description="Unsupervised cross-task generalization (ReCross, TaskShop, ELM) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["recross_jax", "recross_jax.*", "tasks", "tasks.*"]),
    # The embedded ReCross release travels with the package (tasks/recross.py reads it).
    package_data={"recross_jax": ["py.typed", "selection/data/taskweb.json"],
                  "tasks": ["recross_release/*.json", "recross_release/LICENSE",
                            "recross_release/*/*.xz", "recross_release/*.xz"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["recross=recross_jax.cli:main"]},
)
