"""Benchmark: K adapter experts on one frozen backbone, in one stacked (vmapped) jitted step vs
one after another (issue 24; `expert.train_experts`).

    taskset -c 1 python scripts/bench_experts.py --gin_file=gin/runs/experts.gin \\
        [--backbone MODEL_DIR] [--experts 4 --steps 3 --repeats 2] [--out RESULT.json]

Without `--backbone`, a tiny BERT2BERT (2+2 layers of width 64) stands in. Every expert trains
on its own synthetic examples (seeded; input and target lengths uniform in [half, all] of
`experts.settings`' limits) for `--steps` steps of `experts.settings.batch_size`. Three modes,
interleaved in each repeat so that a busy machine slows them alike:

- `sequential`: `train_expert` on each expert in turn (`finetune.finetune` with the backbone
  frozen by optimizer masking: what training one expert per command does);
- `stacked`: all K in one vmapped step, backbone broadcast, only the experts' own parameters
  differentiated;
- `stacked_1`: the stacked step with K = 1, run K times (the gain that is not vmapping's).

Each mode first runs once to compile (reported as `first_seconds`); the best of `--repeats`
timed runs after that is `seconds`. Prints (and writes to `--out`) JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from bench_mining import synthetic_pairs  # scripts/, this script's directory

from recross_jax import gin_utils, io_utils, models
from recross_jax.experts import cli as experts_cli
from recross_jax.experts import expert
from recross_jax.models import Bert2BertConfig

TINY = Bert2BertConfig(vocab_size=1000, hidden_size=64, num_encoder_layers=2,
                       num_decoder_layers=2, num_attention_heads=4, intermediate_size=256,
                       max_position_embeddings=256, decoder_start_token_id=1)


def backbone_of(model_dir: str | None) -> expert.Backbone:
    """The backbone in `model_dir`, or the tiny stand-in (seeded)."""
    if model_dir:
        return experts_cli.load_backbone(model_dir)
    return expert.Backbone.of(TINY, nn.unbox(models.init_params(TINY, jax.random.PRNGKey(0))))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gin_utils.add_gin_flags(parser)
    parser.add_argument("--backbone", help="model directory (default: a tiny BERT2BERT)")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="train steps per expert")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the result here (JSON)")
    args = parser.parse_args(argv)
    gin_utils.parse_gin_flags(args)
    cfg = experts_cli.settings()
    # One epoch: `--steps` alone sets the length of each expert's run.
    settings = experts_cli.training_settings({**cfg, "epochs": 1})
    backbone = backbone_of(args.backbone)
    rng = np.random.default_rng(args.seed)
    lengths = [(cfg["max_input_length"] // 2, cfg["max_input_length"]),
               (cfg["max_target_length"] // 2, cfg["max_target_length"])]
    pair_sets = [synthetic_pairs(args.steps * settings.batch_size, backbone.config.vocab_size,
                                 *lengths, rng) for _ in range(args.experts)]
    modes = {
        "sequential": lambda: expert.train_experts(backbone, pair_sets, cfg["reduction"],
                                                   settings, stacked=False),
        "stacked": lambda: expert.train_experts(backbone, pair_sets, cfg["reduction"], settings,
                                                stacked=True),
        "stacked_1": lambda: [expert.train_experts(backbone, [pairs], cfg["reduction"],
                                                   settings, stacked=True)
                              for pairs in pair_sets]}
    first = {name: timed(fn) for name, fn in modes.items()}
    runs: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, fn in modes.items():
            runs[name].append(timed(fn))
    best = {name: min(times) for name, times in runs.items()}
    result = {
        "backbone": args.backbone or "tiny", "config": backbone.config.to_dict(),
        "experts": args.experts, "steps_per_expert": args.steps,
        "batch_size": settings.batch_size, "max_input_length": cfg["max_input_length"],
        "max_target_length": cfg["max_target_length"], "reduction": cfg["reduction"],
        "owned": experts_cli.owned(cfg).to_dict(),
        "first_seconds": {k: round(v, 2) for k, v in first.items()},
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "all_seconds": {k: [round(t, 3) for t in v] for k, v in runs.items()},
        "speedup_stacked_vs_sequential": round(best["sequential"] / best["stacked"], 3),
        "speedup_stacked_vs_stacked_1": round(best["stacked_1"] / best["stacked"], 3),
        "machine": {"cpu": _cpu_name(), "python": platform.python_version(),
                    "jax": jax.__version__, "devices": str(jax.devices()),
                    "affinity": sorted(os.sched_getaffinity(0))},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(json.dumps(result, indent=2))
    if args.out:
        io_utils.write_json_atomic(args.out, result)
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    main()
    sys.exit(0)
