"""Merging experts (SPEC §3): uniform averages of adapters, and task vectors of full fine-tunes.

Task arithmetic: with τ_i = θ_i − θ_pre, θ = θ_pre + Σ λ_i τ_i, λ_i = 1/N by default; `tune_lambda`
picks one shared λ from a grid by a caller's score on held-out examples of the merged tasks
(never the target's).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from recross_jax.errors import UserError

LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))


def _check_trees(trees: Sequence[Any], what: str) -> None:
    if not trees:
        raise UserError(f"nothing to merge: no {what}")
    structure = jax.tree.structure(trees[0])
    shapes = [np.shape(leaf) for leaf in jax.tree.leaves(trees[0])]
    for position, tree in enumerate(trees[1:], 1):
        if (jax.tree.structure(tree) != structure
                or [np.shape(leaf) for leaf in jax.tree.leaves(tree)] != shapes):
            raise UserError(f"cannot merge: {what} {position} has other parameters than {what} 0")


def average(trees: Sequence[Any]) -> Any:
    """The uniform average of parameter trees of one structure (e.g. experts' adapters)."""
    _check_trees(trees, "expert")
    return jax.tree.map(lambda *leaves: np.mean(np.stack(leaves), axis=0).astype(
        np.result_type(leaves[0])), *trees)


def task_vector_merge(pretrained: Any, finetuned: Sequence[Any],
                      lambdas: Sequence[float] | None = None) -> Any:
    """θ_pre + Σ λ_i (θ_i − θ_pre) over the fine-tunes `finetuned` (λ_i = 1/N by default)."""
    _check_trees([pretrained, *finetuned], "model")
    lambdas = [1.0 / len(finetuned)] * len(finetuned) if lambdas is None else list(lambdas)
    if len(lambdas) != len(finetuned):
        raise UserError(f"{len(lambdas)} task vector weights for {len(finetuned)} models")

    def merge(base: Any, *tuned: Any) -> np.ndarray:
        base = np.asarray(base)
        delta = sum(weight * (np.asarray(t) - base) for weight, t in zip(lambdas, tuned))
        return (base + delta).astype(base.dtype)

    return jax.tree.map(merge, pretrained, *finetuned)


def tune_lambda(pretrained: Any, finetuned: Sequence[Any], score: Callable[[Any], float],
                grid: Sequence[float] = LAMBDA_GRID) -> tuple[float, Any, dict[float, float]]:
    """The shared λ (θ = θ_pre + λ Σ τ_i) of `grid` whose merge `score`s highest (ties: the
    first in `grid`); returns (λ, its merged parameters, every λ's score)."""
    if not grid:
        raise UserError("tune_lambda needs at least one lambda")
    scores: dict[float, float] = {}
    best: tuple[float, Any] | None = None
    for value in grid:
        merged = task_vector_merge(pretrained, finetuned, [value] * len(finetuned))
        scores[value] = float(score(merged))
        if best is None or scores[value] > scores[best[0]]:
            best = (value, merged)
    return best[0], best[1], scores
