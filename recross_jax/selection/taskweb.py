"""TaskWeb's published numbers (Kim et al., 2023), embedded so TaskShop runs on a fresh clone.

`data/taskweb.json` holds what the authors released (github.com/danieljkim0118/TaskWeb at
4d5b1d34; its `about` field names each source file): the pairwise transfer matrix as [PC, PM]
per training setup, the authors' Retrieval-of-Experts scores F(s→t), and the absolute target
scores after source→target fine-tuning of T5-large that Regret@k is measured on. The prompted
examples of the 23 tasks are not embedded (`../shared/data/taskweb/tasks`, `estimators.py`).

Conventions of the authors' evaluation code (`taskshop/taskshop_evaluate.py`), kept here:
- 22 tasks take part as sources; `squad_v2` is never a target (no transfer into it was
  measured) and `story_cloze` is only ever a target (it has RoE scores but no transfer).
- Table 2 evaluates the 20 targets of `CATEGORIES`, leave-one-out: every other of the 22 tasks
  is a candidate source. `piqa` is held out: λ was tuned on it.
- The gold transfer score is T(s→t) = 0.5·PC + 0.5·(0.2·PM − 0.1) of the `finetune/t5l` setup.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Mapping

from recross_jax.errors import UserError

DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "taskweb.json")

TASKS = ("anli_r3", "boolq", "cb", "copa", "cosmosqa", "hellaswag", "imdb", "mrpc", "piqa", "qnli",
         "qqp", "quartz", "rotten_tomatoes", "rte", "scitail", "snli", "socialiqa", "squad_v2", "stsb",
         "wic", "winogrande", "wsc")
# Tasks with prompted examples: the 22 above and a target-only task.
EXAMPLE_TASKS = TASKS + ("story_cloze",)
CATEGORIES = {
    "NLI/Entailment": ("anli_r3", "cb", "qnli", "rte", "snli", "scitail"),
    "Paraphrase": ("mrpc", "qqp", "stsb"),
    "Commonsense": ("copa", "cosmosqa", "hellaswag", "quartz", "socialiqa", "winogrande"),
    "Sentiment": ("imdb", "rotten_tomatoes"),
    "QA": ("boolq",),
    "Semantics": ("wic", "wsc"),
}
EVAL_TARGETS = tuple(task for tasks in CATEGORIES.values() for task in tasks)
# The embedded ReCross release's registered task (`tasks/recross.py`) of each TaskWeb task it
# holds too: where the transfer runner reads their examples.
RECROSS_TASKS = {
    "anli_r3": "recross.anli_r3", "boolq": "recross.super_glue_boolq", "cb": "recross.super_glue_cb",
    "copa": "recross.super_glue_copa", "cosmosqa": "recross.cosmos_qa", "hellaswag": "recross.hellaswag",
    "imdb": "recross.imdb", "mrpc": "recross.glue_mrpc", "piqa": "recross.piqa", "qqp": "recross.glue_qqp",
    "quartz": "recross.quartz", "rotten_tomatoes": "recross.rotten_tomatoes", "rte": "recross.super_glue_rte",
    "socialiqa": "recross.social_i_qa", "squad_v2": "recross.squad_v2",
    "story_cloze": "recross.story_cloze_2016", "wic": "recross.super_glue_wic",
    "winogrande": "recross.winogrande_winogrande_xl", "wsc": "recross.super_glue_wsc_fixed",
}
HELDOUT_TARGET = "piqa"
DEFAULT_SETUP = "finetune/t5l"
MEAN_SETUP = "mean"  # PC and PM averaged over the seven setups
DEFAULT_LAMBDA = 0.7


def combine(pc: float, pm: float) -> float:
    """The authors' single transfer score from PC and PM: 0.5·PC + 0.5·(0.2·PM − 0.1)."""
    return 0.5 * pc + 0.5 * (0.2 * pm - 0.1)


@functools.cache
def release() -> dict:
    """The embedded JSON (parsed once)."""
    with open(DATA_FILE, encoding="utf-8") as f:
        return json.load(f)


def setups() -> tuple[str, ...]:
    """The training setups of the transfer matrix ('finetune/t5l', ...) and 'mean'."""
    return tuple(release()["setups"]) + (MEAN_SETUP,)


def pc_pm(setup: str = DEFAULT_SETUP) -> dict[str, dict[str, tuple[float, float]]]:
    """`{target: {source: (PC, PM)}}` of one setup ('mean': averaged over the seven)."""
    data = release()
    if setup == MEAN_SETUP:
        table = data["transfer_mean"]
    elif setup in data["transfer"]:
        table = data["transfer"][setup]
    else:
        raise UserError(f"unknown TaskWeb setup {setup!r} (known: {', '.join(setups())})")
    return {t: {s: (float(v[0]), float(v[1])) for s, v in row.items()} for t, row in table.items()}


def transfer(setup: str = DEFAULT_SETUP) -> dict[str, dict[str, float]]:
    """The gold transfer scores `{target: {source: T(source→target)}}` of one setup."""
    return {t: {s: combine(*v) for s, v in row.items()} for t, row in pc_pm(setup).items()}


def roe() -> dict[str, dict[str, float]]:
    """The authors' Retrieval-of-Experts scores `{target: {source: F(source→target)}}`."""
    return {t: dict(row) for t, row in release()["roe"].items()}


def target_perf() -> dict[str, dict[str, float]]:
    """`{target: {source: score}}`: the target's absolute score after source→target fine-tuning
    of T5-large (mean of 8 seeds), what Regret@k compares."""
    return {t: dict(row) for t, row in release()["target_perf"].items()}


def category_of(task: str) -> str | None:
    """The Table-2 category of a target, or None."""
    return next((name for name, tasks in CATEGORIES.items() if task in tasks), None)


def check_task(task: str, known: Mapping | tuple = EXAMPLE_TASKS) -> str:
    """`task` if it is a TaskWeb task (of `known`), else a UserError naming the known ones."""
    if task not in known:
        raise UserError(f"unknown TaskWeb task {task!r} (known: {', '.join(sorted(known))})")
    return task
