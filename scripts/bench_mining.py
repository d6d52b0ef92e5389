"""Benchmark: one mining round of n group fine-tunes, vmapped in parallel vs a Python loop.

    JAX_PLATFORMS=cpu python scripts/bench_mining.py [--groups 5 --group_size 20 --repeats 3]

Both modes run `mining.GroupFinetuner.heldout_losses` (n copies of a randomly initialised
model fine-tuned on 20 synthetic examples each, 1 epoch of batch 2, then each copy's loss on
100 held-out examples) on the same device; the wall time per round is measured after
compilation. FLOPs per round come from XLA's cost analysis of one copy's train step and
held-out loss, so the achieved FLOP/s can be compared with the machine's peak.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import time

import gin
import jax
import numpy as np

from recross_jax import finetune, gin_utils, partitioning, training
from recross_jax.models import t5
from recross_jax.rerank import mining


def model_config(gin_file: str, dropout_rate: float | None) -> t5.T5Config:
    """The T5Config a gin/models file binds to MODEL_CONFIG."""
    gin_utils.parse([gin_file], [])
    config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    gin.clear_config()
    return config if dropout_rate is None else dataclasses.replace(config, dropout_rate=dropout_rate)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The fp32 GFLOP/s of a jitted square matmul on the default device (best of `repeats`)."""
    a = jax.numpy.ones((size, size), jax.numpy.float32)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def synthetic_pairs(count: int, vocab_size: int, input_lengths: tuple[int, int],
                    target_lengths: tuple[int, int], rng: np.random.Generator) -> list:
    """Random (input ids, target ids) pairs, EOS (1) ended, lengths uniform in the ranges."""
    def ids(low: int, high: int) -> list[int]:
        return [int(x) for x in rng.integers(3, vocab_size, rng.integers(low, high + 1) - 1)] + [1]
    return [(ids(*input_lengths), ids(*target_lengths)) for _ in range(count)]


def flops_per_round(config: t5.T5Config, params, cfg: finetune.FinetuneConfig, groups: list,
                    heldout: list, eval_batch_size: int) -> dict[str, float]:
    """XLA's FLOP counts of one round: every copy's train steps, and its held-out batches."""
    model = t5.Transformer(config)
    steps = finetune.num_steps(len(groups[0]), cfg.batch_size, cfg.epochs)
    optimizer = cfg.make_optimizer(steps)
    state = training.TrainState.create(params, optimizer)
    shape = finetune.padded_shape([p for g in groups for p in g], cfg.batch_size, None)
    step = training.make_train_step(model, optimizer, z_loss=0.0, jit=False)
    step_flops = _flops(step, state, finetune.make_batch(groups[0][:cfg.batch_size], shape))
    eval_batches = finetune.length_sorted_batches(heldout, min(eval_batch_size, len(heldout)))
    eval_flops = sum(_flops(lambda p, b: finetune.per_example_loss(model, p, b), params, batch)
                     for _, batch in eval_batches)
    return {"train": len(groups) * steps * step_flops, "heldout": len(groups) * eval_flops}


def _flops(fn, *args) -> float:
    with partitioning.activate(partitioning.create_mesh(devices=jax.devices()[:1])):
        analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def time_rounds(finetuners: dict[str, mining.GroupFinetuner], groups: list, seeds: list[int],
                heldout: list, repeats: int) -> dict[str, dict]:
    """Per mode: the first (compiling) round's seconds, then `repeats` timed rounds, the modes
    alternating so that a change in the machine's load hits both alike."""
    results = {}
    for name, finetuner in finetuners.items():
        start = time.perf_counter()
        losses = finetuner.heldout_losses(groups, seeds, heldout)
        results[name] = {"first_round_s": time.perf_counter() - start, "round_s": [],
                         "losses": [float(x) for x in losses]}
    for _ in range(repeats):
        for name, finetuner in finetuners.items():
            start = time.perf_counter()
            finetuner.heldout_losses(groups, seeds, heldout)
            results[name]["round_s"].append(time.perf_counter() - start)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_gin", default="gin/models/t5_1_1_mini.gin")
    parser.add_argument("--dropout_rate", type=float, default=None, help="default: the gin file's")
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--group_size", type=int, default=20)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--eval_batch_size", type=int, default=50)
    parser.add_argument("--input_lengths", type=int, nargs=2, default=(24, 100),
                        help="min and max input tokens (BIG-bench prompts: tens to ~100)")
    parser.add_argument("--target_lengths", type=int, nargs=2, default=(2, 12))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak_gflops", type=float,
                        help="the device's fp32 peak, for the utilisation figure (default: "
                             "measured here on a 2048 x 2048 matmul)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.peak_gflops is None:
        args.peak_gflops = matmul_gflops()
    config = model_config(args.model_gin, args.dropout_rate)
    params = training.init_params(config, args.seed, partitioning.create_mesh(devices=jax.devices()[:1]))
    rng = np.random.default_rng(args.seed)
    pairs = synthetic_pairs(args.groups * args.group_size, config.vocab_size, tuple(args.input_lengths),
                            tuple(args.target_lengths), rng)
    heldout = synthetic_pairs(args.heldout, config.vocab_size, tuple(args.input_lengths),
                              tuple(args.target_lengths), rng)
    groups = [pairs[i * args.group_size:(i + 1) * args.group_size] for i in range(args.groups)]
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, args.groups)]
    cfg = mining.GROUP_FINETUNE
    breakdown = flops_per_round(config, params, cfg, groups, heldout, args.eval_batch_size)
    flops = sum(breakdown.values())

    finetuners = {name: mining.GroupFinetuner(config, params, cfg, parallel=parallel,
                                              eval_batch_size=args.eval_batch_size)
                  for name, parallel in (("sequential", False), ("parallel", True))}
    results = time_rounds(finetuners, groups, seeds, heldout, args.repeats)
    for r in results.values():
        r["median_round_s"] = statistics.median(r["round_s"])
        r["gflops_per_s"] = flops / r["median_round_s"] / 1e9
    np.testing.assert_allclose(results["parallel"]["losses"], results["sequential"]["losses"], rtol=1e-4)
    speedup = results["sequential"]["median_round_s"] / results["parallel"]["median_round_s"]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(jax.devices()[0]), "devices": jax.device_count(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "model": args.model_gin,
        "params_millions": sum(x.size for x in jax.tree.leaves(params)) / 1e6,
        "groups": args.groups, "group_size": args.group_size, "batch_size": cfg.batch_size,
        "heldout": args.heldout, "gflop_per_round": flops / 1e9, "peak_gflops": args.peak_gflops,
        "gflop_per_round_by_stage": {k: v / 1e9 for k, v in breakdown.items()}, "speedup": speedup,
        **{name: {k: v for k, v in r.items() if k != "losses"} for name, r in results.items()},
    }
    for name in ("sequential", "parallel"):
        r = results[name]
        print(f"{name:>10}: {r['median_round_s']:.3f} s/round (median of {args.repeats}; first round "
              f"with compilation {r['first_round_s']:.1f} s), {r['gflops_per_s']:.1f} GFLOP/s = "
              f"{r['gflops_per_s'] / args.peak_gflops:.0%} of {args.peak_gflops:.0f} GFLOP/s peak")
    print(f"{flops / 1e9:.1f} GFLOP per round ({breakdown['train'] / 1e9:.1f} training, "
          f"{breakdown['heldout'] / 1e9:.1f} held-out loss); parallel is {speedup:.2f}x the "
          "sequential loop")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
