"""Re-learning's learning rate, chosen on upstream data only (issue 22: never on a target).

Upstream datasets stand in for targets: for each rate of a grid, `base` and ReCross†
(`recross_dense`) run on them (their own examples are never retrieved; queries come from their
train split, evaluation from their validation split), and the rate whose mean gain of ReCross†
over base is highest wins (ties: the smaller rate). `pipeline.run` does this when its config
names stand-in tasks. The validation split of some release datasets shares raw examples with
train, which the upstream model saw: that lifts base and re-learned runs alike, so it bears on
the level, not on the choice.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from recross_jax import reporting
from recross_jax.errors import UserError

METHOD = "recross_dense"
METHODS = ("base", METHOD)
EVAL_SPLIT = "validation"


def gains(results_dir: str, tasks: Sequence[str], num_query_sets: int, metric: str) -> dict:
    """Mean gain of ReCross† over base per task (over query sets) and overall (over tasks)."""
    runs = reporting.load_runs(results_dir, targets=tasks, num_query_sets=num_query_sets)
    scores = reporting.scores_by_method(runs, metric)
    diffs = {t: float(np.mean([scores[METHOD][t][q] - scores["base"][t][q] for q in scores[METHOD][t]]))
             for t in tasks}
    return {"per_task": diffs, "mean": float(np.mean(list(diffs.values())))}


def choose(by_rate: Mapping[float, Mapping]) -> float:
    """The rate of the highest mean gain; ties go to the smaller rate."""
    if not by_rate:
        raise UserError("no learning rate to choose from")
    return max(sorted(by_rate), key=lambda rate: (by_rate[rate]["mean"], -rate))


def markdown(by_rate: Mapping[float, Mapping], chosen: float, metric: str) -> str:
    """Rates as rows, stand-in tasks as columns: the gain of ReCross† over base in points."""
    tasks = list(next(iter(by_rate.values()))["per_task"])
    lines = [f"Gain of ReCross† over base ({metric}, points) on upstream stand-ins (validation).", "",
             "| learning rate | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for rate in sorted(by_rate):
        cells = [_points(by_rate[rate]['per_task'][t]) for t in tasks]
        mark = " (chosen)" if rate == chosen else ""
        lines.append(f"| {rate:g}{mark} | " + " | ".join(cells) + f" | {_points(by_rate[rate]['mean'])} |")
    return "\n".join(lines) + "\n"


def _points(gain: float) -> str:
    """A gain in signed points; a float's rounding residue prints as +0.00, not -0.00."""
    return f"{round(100 * gain, 2) + 0.0:+.2f}"
