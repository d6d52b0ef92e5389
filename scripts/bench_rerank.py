"""Pairs/s of our Flax cross-encoder reranker against the same MiniLM cross-encoder in PyTorch.

Both sides score the same |Q| x |R'| (query, candidate) pairs with the same weights (the
all-MiniLM-L6-v2 backbone and pooler plus one seeded 2-way head, copied into transformers'
`BertForSequenceClassification`), the same pair tokenization (longest-first truncation to
`--max_length`) and the same batch size, end to end (tokenizing included), each in its own
process pinned to the same CPU cores (torch with that many threads). The PyTorch side runs in
two orders: the pairs as given, query by query (what a plain loop over the candidates does, as
the original ReCross reranker and sentence-transformers' `CrossEncoder.predict`), and sorted by
length (less padding), `--batch_size` pairs a call. Ours packs the pairs into rows of a few
fixed lengths (`retrieval.packing`: short pairs several to a row, each attending only to
itself), `--batch_size` rows of 64 tokens a call.
JAX's compile time is measured by a warm-up pass and reported apart; the throughput is the
best of `--repeats` timed passes.

    python scripts/bench_rerank.py --queries 16 --candidates 64 --batch_size 64 --cores 2
    python scripts/bench_rerank.py --texts pool.jsonl   # texts from a JSONL with "inputs"
    python scripts/bench_rerank.py --dtype bfloat16     # both sides' activations in bfloat16

`--dtype bfloat16` computes both sides' activations in bfloat16: ours with float32 parameters
cast at each product (accumulated in float32), PyTorch's model converted with `.to(bfloat16)`.

By default the texts come from the ReCross release embedded in tasks/ (`tasks.recross`): |Q|
test inputs of one target dataset (`--query_task`, a BIG-bench target by default) and |R'|
candidates drawn across the T0 upstream tasks' training inputs (seeded). Needs torch and
transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Callable

import numpy as np
from bench_workers import run_pinned


def release_texts(query_task: str, num_queries: int, num_candidates: int, seed: int
                  ) -> tuple[list[str], list[str]]:
    """Queries: test inputs of a dataset of the ReCross release; candidates: at most 2 training
    inputs from each of the shuffled T0 upstream tasks (`t0_upstream`, SPEC 4)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import seqio  # pylint: disable=import-outside-toplevel

    from tasks import recross  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(seed)

    def inputs(task: str, split: str) -> list[str]:
        return [e["inputs"] for e in recross.examples(task, split) if e["inputs"].strip()]

    pool = inputs(recross.task_name(query_task), "test")
    if len(pool) < num_queries:
        sys.exit(f"{query_task} has {len(pool)} test inputs, fewer than {num_queries}")
    queries = [pool[i] for i in rng.choice(len(pool), num_queries, replace=False)]
    upstream = sorted(task.name for task in seqio.MixtureRegistry.get("t0_upstream").tasks)
    candidates: list[str] = []
    for task in (upstream[i] for i in rng.permutation(len(upstream))):
        texts = inputs(task, "train")
        candidates += [texts[i] for i in rng.choice(len(texts), min(2, len(texts)),
                                                    replace=False)]
        if len(candidates) >= num_candidates:
            return queries, candidates[:num_candidates]
    sys.exit(f"the T0 upstream tasks hold fewer than {num_candidates} inputs")


def file_texts(path: str, num_queries: int, num_candidates: int, seed: int
               ) -> tuple[list[str], list[str]]:
    """A seeded draw of disjoint queries and candidates from a JSONL file with "inputs"."""
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["inputs"] for line in f if line.strip()]
    if len(texts) < num_queries + num_candidates:
        sys.exit(f"{path} has {len(texts)} texts, fewer than {num_queries + num_candidates}")
    order = np.random.default_rng(seed).permutation(len(texts))
    return ([texts[i] for i in order[:num_queries]],
            [texts[i] for i in order[num_queries:num_queries + num_candidates]])


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _measure(fn: Callable[[], np.ndarray], repeats: int) -> dict:
    """Warm-up time, then the best wall and CPU time of `repeats` passes (a shared machine
    makes wall time include waiting for the cores; CPU time does not), and the output."""
    warmup = _timed(fn)[0]
    times = [_timed(fn) for _ in range(repeats)]
    return {"warmup": warmup, "wall": min(t[0] for t in times),
            "cpu": min(t[1] for t in times), "scores": fn()}


def run_ours(queries: list[str], candidates: list[str], args: argparse.Namespace) -> dict:
    from recross_jax import partitioning  # pylint: disable=import-outside-toplevel
    from recross_jax.rerank.cross_encoder import Reranker  # pylint: disable=import-outside-toplevel
    partitioning.use_cpu_devices(args.devices)  # batches are sharded over them
    reranker = Reranker.from_init_dir(None, max_length=args.max_length, seed=args.seed,
                                      dtype=args.dtype, batch_size=args.batch_size,
                                      mesh=partitioning.create_mesh())
    return _measure(lambda: reranker.score_pairs(queries, candidates), args.repeats)


def run_torch(queries: list[str], candidates: list[str], args: argparse.Namespace) -> dict:
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import AutoTokenizer, BertForSequenceClassification

    from recross_jax import assets  # pylint: disable=import-outside-toplevel
    from recross_jax.models.bert import BertConfig  # pylint: disable=import-outside-toplevel
    from recross_jax.rerank import cross_encoder  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model_dir = assets.minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    config = BertConfig.from_json_file(os.path.join(model_dir, "config.json"))
    head = cross_encoder.head_params(config, args.seed)["classifier"]
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(head["kernel"].T))
        model.classifier.bias.copy_(torch.tensor(head["bias"]))
    model = model.to(getattr(torch, args.dtype))
    firsts = [q for q in queries for _ in candidates]
    seconds = list(candidates) * len(queries)

    def score() -> np.ndarray:
        order = np.arange(len(firsts))
        if args.worker == "torch_sorted":  # the sort is part of the work, so it is timed
            lengths = [len(ids) for ids in tokenizer(firsts, seconds, truncation="longest_first",
                                                     max_length=args.max_length)["input_ids"]]
            order = np.argsort(lengths, kind="stable")
        out = np.zeros(len(firsts), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), args.batch_size):
                rows = order[start:start + args.batch_size]
                batch = tokenizer([firsts[i] for i in rows], [seconds[i] for i in rows],
                                  padding=True, truncation="longest_first",
                                  max_length=args.max_length, return_tensors="pt")
                out[rows] = model(**batch).logits[:, 1].float().numpy()
        return out.reshape(len(queries), len(candidates))

    return _measure(score, args.repeats)


def worker(args: argparse.Namespace) -> None:
    """One side of the benchmark, in a process already pinned to its cores."""
    with open(args.pairs, encoding="utf-8") as f:
        texts = json.load(f)
    queries, candidates = texts["queries"], texts["candidates"]
    result = (run_ours if args.worker == "ours" else run_torch)(queries, candidates, args)
    np.save(args.out, result.pop("scores"))
    print(json.dumps({**result, "pairs": len(queries) * len(candidates)}))


SIDES = (("torch_given", "PyTorch, pairs as given"), ("torch_sorted", "PyTorch, length-sorted"),
         ("ours", "ours (Flax, jit, packed)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--queries", type=int, default=16, help="|Q|")
    parser.add_argument("--candidates", type=int, default=64, help="|R'|")
    parser.add_argument("--query_task", default="winowhy",
                        help="dataset of the ReCross release whose test inputs are the queries "
                             "(default: winowhy, a BIG-bench target)")
    parser.add_argument("--texts", help="JSONL with 'inputs' instead of the ReCross release")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="pairs per PyTorch call; rows of 64 tokens per call of ours")
    parser.add_argument("--max_length", type=int, default=512, help="tokens per pair")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores (and torch threads)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", type=int, default=1,
                        help="JAX CPU devices of our side (e.g. one per core; batches sharded over them)")
    parser.add_argument("--seed", type=int, default=0, help="texts and head weights")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="activation dtype of both sides")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--skip_given", action="store_true",
                        help="skip the slow PyTorch-as-given side (compare with sorted only)")
    parser.add_argument("--worker", choices=[s for s, _ in SIDES], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.texts:
        queries, candidates = file_texts(args.texts, args.queries, args.candidates, args.seed)
    else:
        queries, candidates = release_texts(args.query_task, args.queries, args.candidates,
                                            args.seed)
    cores = sorted(os.sched_getaffinity(0))[:args.cores]
    sides = [(side, name) for side, name in SIDES if not (args.skip_given and side == "torch_given")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pairs_file = os.path.join(tmp, "texts.json")
        with open(pairs_file, "w", encoding="utf-8") as f:
            json.dump({"queries": queries, "candidates": candidates}, f)
        for side, _ in sides:
            out = os.path.join(tmp, f"{side}.npy")
            command = [sys.executable, __file__, "--worker", side, "--out", out,
                       "--pairs", pairs_file] + [
                f"--{k}={v}" for k, v in vars(args).items()
                if k in ("batch_size", "max_length", "repeats", "seed", "devices", "dtype")]
            results[side] = run_pinned(side, command, cores)
            results[side]["scores"] = np.load(out)
    pairs = results["ours"]["pairs"]
    for side, name in sides:
        r = results[side]
        print(f"{name:28s} {pairs / r['wall']:8.1f} pairs/s wall, {pairs / r['cpu']:8.1f} per "
              f"CPU-s ({r['wall']:.2f} s per pass, {r['cpu']:.2f} CPU-s; first pass "
              f"{r['warmup']:.2f} s)")
    ours = results["ours"]
    summary = {"pairs": pairs, "query_task": None if args.texts else args.query_task,
               "texts": args.texts, "batch_size": args.batch_size, "max_length": args.max_length,
               "cores": cores, "devices": args.devices, "dtype": args.dtype,
               "date": time.strftime("%Y-%m-%d"),
               "max_abs_logit_diff": float(np.abs(ours["scores"]
                                                  - results["torch_sorted"]["scores"]).max())}
    for side, _ in sides[:-1]:
        r = results[side]
        summary[f"ratio_vs_{side}"] = {"wall": r["wall"] / ours["wall"],
                                       "cpu": r["cpu"] / ours["cpu"]}
        print(f"speed ratio ours / {side}: {summary[f'ratio_vs_{side}']['wall']:.2f}x wall, "
              f"{summary[f'ratio_vs_{side}']['cpu']:.2f}x CPU time")
    print(f"{pairs} pairs, batch_size={args.batch_size}, max_length={args.max_length}, "
          f"cores={cores}, our devices={args.devices}, {args.dtype}; max |logit difference| "
          "ours vs PyTorch "
          f"{summary['max_abs_logit_diff']:.2e}")
    if args.json:
        summary["sides"] = {side: {k: v for k, v in results[side].items() if k != "scores"}
                            for side, _ in sides}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
