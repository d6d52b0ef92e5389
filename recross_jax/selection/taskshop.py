"""TaskShop (Kim et al., 2023, §4): estimating source→target transfer for a new target.

TS(s, t) = λ · mean over pivots p of ( T(s→p) + F(p→t) ) / 2 + (1 − λ) · F(s→t)

T is measured transfer among the known tasks (TaskWeb), F any few-example estimator of
transfer into t (`estimators.py`: Retrieval-of-Experts, model embeddings, or a table of the
user's own). The pivots are the tasks p ∉ {s, t} with both a measured T(s→p) and an F(p→t) --
for TaskWeb, every other task but squad_v2, into which no transfer was measured (the authors'
`taskshop_predict.py`). TS is directional: TS(s, t) ≠ TS(t, s). Nothing measured about the
target itself is used (T(·→t) is never read), so TaskShop for t is a leave-one-out estimate.

The authors store 5·TS − 0.6 ("rescale for easier analysis"); rankings are the same, and these
functions return TS itself.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from recross_jax.errors import UserError
from recross_jax.selection import ranking, taskweb

Table = Mapping[str, Mapping[str, float]]  # {target: {source: score}}


def check_lambda(lam: float) -> float:
    """λ as a float in [0, 1], else a UserError."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
        raise UserError(f"TaskShop's lambda must be a number in [0, 1], got {lam!r}")
    return float(lam)


def taskshop_scores(f_target: Mapping[str, float], transfer: Table, target: str,
                    sources: Sequence[str] | None = None, lam: float = taskweb.DEFAULT_LAMBDA
                    ) -> dict[str, float]:
    """TS(s, target) for each source s.

    Args:
      f_target: F(x→target) for every task x (the candidates and the pivots).
      transfer: measured T as `{p: {s: T(s→p)}}`; the row of `target` is not used.
      target: the target task.
      sources: the candidate sources (default: every task of `f_target` but the target).
      lam: weight of the pivot term.

    Returns:
      {source: TS(source, target)}; a source with no usable pivot gets F(s→t) alone.
    """
    lam = check_lambda(lam)
    sources = [s for s in (f_target if sources is None else sources) if s != target]
    out = {}
    for source in sources:
        if source not in f_target:
            raise UserError(f"no F({source}→{target}) score")
        pivots = [p for p in f_target
                  if p not in (source, target) and source in transfer.get(p, {})]
        direct = float(f_target[source])
        if not pivots:
            out[source] = direct
            continue
        pivot = float(np.mean([0.5 * transfer[p][source] + 0.5 * f_target[p] for p in pivots]))
        out[source] = lam * pivot + (1.0 - lam) * direct
    return out


def taskshop_table(f: Table, transfer: Table, targets: Sequence[str] | None = None,
                   lam: float = taskweb.DEFAULT_LAMBDA) -> dict[str, dict[str, float]]:
    """`{t: {s: TS(s, t)}}` for the targets of `f` (or `targets`), each leave-one-out."""
    out = {}
    for target in (f if targets is None else targets):
        if target not in f:
            raise UserError(f"no F scores for target {target!r}")
        held_out = {p: row for p, row in transfer.items() if p != target}
        out[target] = taskshop_scores(f[target], held_out, target, lam=lam)
    return out


def evaluate_taskweb(pred: Table, setup: str = taskweb.DEFAULT_SETUP,
                     categories: Mapping[str, Sequence[str]] | None = None,
                     ks: Sequence[int] = ranking.DEFAULT_KS) -> dict:
    """Table 2 of the paper for one predicted table: NDCG and Regret@k per category and mean,
    against TaskWeb's gold transfer of `setup`, Regret on T5-large's target scores."""
    return ranking.evaluate(pred, taskweb.transfer(setup), taskweb.target_perf(),
                            taskweb.CATEGORIES if categories is None else categories,
                            taskweb.TASKS, ks)


def lambda_curve(f: Table, lambdas: Sequence[float], heldout: str = taskweb.HELDOUT_TARGET,
                 setup: str = taskweb.DEFAULT_SETUP, ks: Sequence[int] = ranking.DEFAULT_KS
                 ) -> list[dict]:
    """For each λ: TaskShop(F)'s NDCG and Regret@k on the held-out target (what λ is tuned
    on) and, for reference, the means over Table 2's targets."""
    gold = taskweb.transfer(setup)
    rows = []
    for lam in lambdas:
        targets = list(taskweb.EVAL_TARGETS) + [heldout]
        pred = taskshop_table(f, gold, targets=targets, lam=lam)
        held = ranking.evaluate(pred, gold, taskweb.target_perf(), {"heldout": [heldout]},
                                taskweb.TASKS, ks)["mean"]
        table = evaluate_taskweb(pred, setup, ks=ks)["mean"]
        row = {"lambda": float(lam)}
        row.update({f"heldout_{k}": v for k, v in held.items() if k != "n"})
        row.update({f"table2_{k}": v for k, v in table.items() if k != "n"})
        rows.append(row)
    return rows


LAMBDA_CRITERIA = ("regret@5", "ndcg")


def best_lambda(curve: Sequence[Mapping[str, float]], criterion: str = "regret@5") -> float:
    """The λ that does best on the held-out target: by `criterion` ('regret@5': lowest held-out
    Regret@5, ties broken by the higher NDCG; 'ndcg': highest NDCG, ties by the lower
    Regret@5); remaining ties go to the smaller λ."""
    if criterion not in LAMBDA_CRITERIA:
        raise UserError(f"unknown lambda criterion {criterion!r} (choose from {', '.join(LAMBDA_CRITERIA)})")
    if not curve:
        raise UserError("no lambda values to choose from")

    def key(row):
        ndcg, regret = round(row["heldout_ndcg"], 12), round(row["heldout_regret@5"], 12)
        return ((regret, -ndcg) if criterion == "regret@5" else (-ndcg, regret)) + (row["lambda"],)

    return min(curve, key=key)["lambda"]
