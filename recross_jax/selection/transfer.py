"""Measured pairwise task transfer, as released by TaskWeb (Kim et al., 2023).

`transfer_scores.json` is a list of records `{"target", "source", "pc_mean", "pm_mean",
"settings"}`: the source → target transfer averaged over seven training setups (PC: relative
change of the target score after first training on the source; PM: the share of setups where
that change is positive) and per setup (`settings["finetune/t5l"] = [PC, PM]`, ...).
"""
from __future__ import annotations

import json
from typing import Collection

from recross_jax.errors import UserError

METRICS = ("pc_mean", "pm_mean")


def load_transfer_scores(path: str, metric: str = "pc_mean", prefix: str = "",
                         sources: Collection[str] | None = None) -> dict[str, dict[str, float]]:
    """`{target: {source: score}}` from a TaskWeb transfer file.

    `metric` is `pc_mean`, `pm_mean` or a setup name such as `finetune/t5l` (its PC); `prefix`
    is put before every task name (e.g. "p3mini." to match registered tasks); `sources` keeps
    only those source tasks (named with the prefix, e.g. the tasks of the upstream mixture).
    """
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        raise UserError(f"transfer score file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"transfer score file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(records, list):
        raise UserError(f"transfer score file {path} must hold a list of records")
    scores: dict[str, dict[str, float]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not {"target", "source"} <= record.keys():
            raise UserError(f"transfer score file {path}: record {i} lacks 'target' or 'source'")
        if sources is not None and prefix + record["source"] not in sources:
            continue
        if metric in METRICS:
            value = record.get(metric)
        else:
            value = record.get("settings", {}).get(metric, [None])[0]
        if not isinstance(value, (int, float)):
            raise UserError(f"transfer score file {path}: record {i} "
                            f"({record['source']} -> {record['target']}) has no {metric!r} score")
        scores.setdefault(prefix + record["target"], {})[prefix + record["source"]] = float(value)
    return scores
