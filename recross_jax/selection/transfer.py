"""Measured pairwise task transfer, as released by TaskWeb (Kim et al., 2023).

`transfer_scores.json` is a list of records `{"target", "source", "pc_mean", "pm_mean",
"settings"}`: the source → target transfer averaged over seven training setups (PC: relative
change of the target score after first training on the source; PM: the share of setups where
that change is positive) and per setup (`settings["finetune/t5l"] = [PC, PM]`, ...). TaskWeb's
single score combines the two: T(s→t) = 0.5·PC + 0.5·(0.2·PM − 0.1) (metric `combined`, or
`combined:finetune/t5l` for one setup, which TaskShop's evaluation uses as gold).
"""
from __future__ import annotations

import json
from typing import Collection

from recross_jax.errors import UserError

METRICS = ("pc_mean", "pm_mean")
COMBINED = "combined"


def combine(pc: float, pm: float) -> float:
    """TaskWeb's transfer score from PC and PM: 0.5·PC + 0.5·(0.2·PM − 0.1)."""
    return 0.5 * pc + 0.5 * (0.2 * pm - 0.1)


def load_transfer_scores(path: str, metric: str = "pc_mean", prefix: str = "",
                         sources: Collection[str] | None = None) -> dict[str, dict[str, float]]:
    """`{target: {source: score}}` from a TaskWeb transfer file.

    `metric` is `pc_mean`, `pm_mean`, a setup name such as `finetune/t5l` (its PC), `combined`
    (`combine` of pc_mean and pm_mean) or `combined:<setup>` (of that setup's PC and PM); `prefix`
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
        value = _value(record, metric)
        if not isinstance(value, (int, float)):
            raise UserError(f"transfer score file {path}: record {i} "
                            f"({record['source']} -> {record['target']}) has no {metric!r} score")
        scores.setdefault(prefix + record["target"], {})[prefix + record["source"]] = float(value)
    return scores


def _value(record: dict, metric: str):
    """The score `metric` names in one record, or None where it is missing."""
    if metric in METRICS:
        return record.get(metric)
    if metric == COMBINED or metric.startswith(COMBINED + ":"):
        setup = metric[len(COMBINED) + 1:]
        pair = ([record.get("pc_mean"), record.get("pm_mean")] if not setup
                else record.get("settings", {}).get(setup))
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(v, (int, float)) for v in pair)):
            return None
        return combine(*pair)
    settings = record.get("settings", {})
    pair = settings.get(metric) if isinstance(settings, dict) else None
    return pair[0] if isinstance(pair, (list, tuple)) and pair else None
