"""Retrieval benchmark: recall@k against exact search and queries/s for ScaNN, exact JAX and FAISS.

One run builds every index over the same pool, times the build and a batched search of the same
queries, and measures recall@k against the exact JAX top-k. FAISS (faiss-cpu, the original
ReCross choice, imported only here) runs as `IndexFlatIP` and as an IVF index whose nprobe is
swept up to the smallest value reaching the target recall. Goal (issue 4): ScaNN recall@100 >=
0.95 at >= 20x the queries/s of exact search at 1M vectors.

Pools: synthetic (default: 1M x 384, a seeded mixture of Gaussian clusters; queries are fresh
draws from the same mixture) or `--pool DIR`, a pool embedded by `recross_jax.retrieval.embed`,
from which `--num_queries` seeded rows are held out as queries and the rest indexed.

  python scripts/bench_retrieval.py                      # 1M x 384 synthetic
  python scripts/bench_retrieval.py --pool runs/idx/pool --metric dot
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import sys
import time
from typing import Callable

import numpy as np

from recross_jax.retrieval.index import build_index, l2_normalize

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def synthetic(num: int, num_queries: int, dims: int, clusters: int, noise: float,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool and queries drawn from one mixture: unit-variance centres plus `noise` x N(0, I)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dims), dtype=np.float32)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dims), np.float32)
        for start in range(0, count, 65536):  # chunks keep float64 temporaries out
            size = min(65536, count - start)
            out[start:start + size] = centers[rng.integers(0, clusters, size)]
            out[start:start + size] += noise * rng.standard_normal((size, dims), dtype=np.float32)
        return out

    return draw(num), draw(num_queries)


def from_pool(pool_dir: str, num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An embedded pool split into indexed rows and `num_queries` held-out query rows."""
    from recross_jax.retrieval.embed import load_pool  # pylint: disable=import-outside-toplevel
    vectors, _, _ = load_pool(pool_dir)
    held_out = np.zeros(len(vectors), bool)
    held_out[np.random.default_rng(seed).choice(len(vectors), num_queries, replace=False)] = True
    return vectors[~held_out], vectors[held_out]


@dataclasses.dataclass
class Truth:
    """Exact search's answer, for recall@k: a found row counts when its exact score reaches the
    k-th best score of its query. Ties at the cut (common in real pools, where templated inputs
    embed alike) are then not misses, as they are under the overlap of row sets."""

    pool: np.ndarray     # [n, d], as scored (L2-normalised for cosine)
    queries: np.ndarray  # [q, d], likewise
    kth: np.ndarray      # [q] the k-th best exact score

    @classmethod
    def of(cls, pool: np.ndarray, queries: np.ndarray, rows: np.ndarray, metric: str) -> Truth:
        if metric == "cosine":
            pool, queries = l2_normalize(pool), l2_normalize(queries)
        truth = cls(pool, queries, np.zeros(len(queries), np.float32))
        truth.kth = truth.scores(rows).min(axis=1)
        return truth

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Exact scores [q, k] of pool `rows` [q, k] (-inf where a row is missing, -1)."""
        scores = np.einsum("qkd,qd->qk", self.pool[np.maximum(rows, 0)], self.queries)
        return np.where(rows >= 0, scores, -np.inf)

    def recall(self, found: np.ndarray) -> float:
        tolerance = 1e-5 * np.maximum(1.0, np.abs(self.kth))
        return float(np.mean(self.scores(found) >= (self.kth - tolerance)[:, None]))


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_ours(backend: str, pool: np.ndarray, queries: np.ndarray, k: int, metric: str,
               truth: Truth | None, **params) -> tuple[dict, np.ndarray]:
    """Build + search with our index; the pool's ids are its row numbers."""
    ids = [str(i) for i in range(len(pool))]
    index, build_s = timed(lambda: build_index(pool, ids, backend=backend, metric=metric,
                                               **params))
    index.search(queries[:256], k)  # compile / warm up outside the timing
    (found, _), search_s = timed(lambda: index.search(queries, k))
    rows = found.astype(np.int64)
    row = {"method": f"{backend} ({'jax' if backend == 'exact' else 'scann'})",
           "build_s": build_s, "qps": len(queries) / search_s,
           "recall": 1.0 if truth is None else truth.recall(rows), "params": index.params}
    return row, rows


def bench_faiss(pool: np.ndarray, queries: np.ndarray, k: int, truth: Truth, nlist: int,
                target: float, threads: int) -> list[dict]:
    import faiss  # pylint: disable=import-outside-toplevel
    faiss.omp_set_num_threads(threads)
    rows = []
    flat, build_s = timed(lambda: _faiss_flat(faiss, pool))
    found, qps = _faiss_search(flat, queries, k)
    rows.append({"method": "faiss IndexFlatIP", "build_s": build_s, "qps": qps,
                 "recall": truth.recall(found), "params": {}})
    del flat
    gc.collect()
    ivf, build_s = timed(lambda: _faiss_ivf(faiss, pool, nlist))
    sweep = []
    for nprobe in NPROBES:
        ivf.nprobe = nprobe
        found, qps = _faiss_search(ivf, queries, k)
        sweep.append({"nprobe": nprobe, "qps": qps, "recall": truth.recall(found)})
        if sweep[-1]["recall"] >= target or nprobe >= nlist:
            break
    best = sweep[-1]
    rows.append({"method": f"faiss IVF{nlist},Flat", "build_s": build_s, "qps": best["qps"],
                 "recall": best["recall"], "params": {"nprobe": best["nprobe"], "sweep": sweep}})
    return rows


def _faiss_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Pool rows [q, k] and queries/s of a warmed-up batched FAISS search."""
    index.search(queries[:16], k)
    (_, found), seconds = timed(lambda: index.search(queries, k))
    return found, len(queries) / seconds


def _faiss_flat(faiss, pool: np.ndarray):
    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(pool)
    return index


def _faiss_ivf(faiss, pool: np.ndarray, nlist: int):
    index = faiss.index_factory(pool.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(pool)  # FAISS samples 256 points per list for k-means itself
    index.add(pool)
    return index


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--num_queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.0,
                        help="within-cluster standard deviation; the centres have 1")
    parser.add_argument("--metric", choices=("dot", "cosine"), default="dot")
    parser.add_argument("--pool", help="an embedded pool directory instead of synthetic data")
    parser.add_argument("--nlist", type=int, default=1024, help="FAISS IVF lists")
    parser.add_argument("--target_recall", type=float, default=0.95)
    parser.add_argument("--scann", action="append", default=[], metavar="NAME=VALUE",
                        help="override a ScaNN parameter of index.py, e.g. search_fraction=0.1")
    parser.add_argument("--skip_faiss", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    if args.pool:
        pool, queries = from_pool(args.pool, args.num_queries, args.seed)
    else:
        pool, queries = synthetic(args.num_vectors, args.num_queries, args.dims, args.clusters,
                                  args.noise, args.seed)
    print(f"pool {pool.shape}, queries {queries.shape}, k={args.k}, metric={args.metric}",
          flush=True)

    exact, rows = bench_ours("exact", pool, queries, args.k, args.metric, None)
    truth = Truth.of(pool, queries, rows, args.metric)
    results = [exact]
    gc.collect()
    print(_line(exact), flush=True)
    scann, _ = bench_ours("scann", pool, queries, args.k, args.metric, truth,
                          **_overrides(args.scann))
    results.append(scann)
    gc.collect()
    print(_line(scann), flush=True)
    if not args.skip_faiss:
        if args.metric == "cosine":  # FAISS scores by inner product: normalise like our index
            pool, queries = l2_normalize(pool), l2_normalize(queries)
        # FAISS's rule of thumb, about 4 sqrt(n) lists, caps --nlist on small pools.
        nlist = min(args.nlist, max(1, int(4 * np.sqrt(len(pool)))))
        for row in bench_faiss(pool, queries, args.k, truth, nlist, args.target_recall,
                               os.cpu_count() or 1):
            results.append(row)
            print(_line(row), flush=True)

    speedup = scann["qps"] / exact["qps"]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cpus",
        "pool": list(pool.shape), "queries": len(queries), "k": args.k, "metric": args.metric,
        "data": args.pool or f"synthetic clusters={args.clusters} noise={args.noise} "
                             f"seed={args.seed}",
        "results": results, "scann_speedup_over_exact": speedup,
        "goal_met": scann["recall"] >= 0.95 and speedup >= 20,
    }
    print(_table(report))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


def _overrides(pairs: list[str]) -> dict:
    """NAME=VALUE strings as keyword arguments, values parsed as JSON (numbers, booleans)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--scann expects NAME=VALUE, got {pair!r}")
        out[name] = json.loads(value)
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _line(row: dict) -> str:
    return (f"{row['method']}: build {row['build_s']:.1f}s, {row['qps']:.0f} queries/s, "
            f"recall {row['recall']:.4f}")


def _table(report: dict) -> str:
    k = report["k"]
    lines = [f"| method | build (s) | queries/s | recall@{k} |", "|---|---:|---:|---:|"]
    for row in report["results"]:
        lines.append(f"| {row['method']} | {row['build_s']:.1f} | {row['qps']:.0f} | "
                     f"{row['recall']:.4f} |")
    lines.append(f"\nScaNN / exact queries/s: {report['scann_speedup_over_exact']:.1f}x "
                 f"(goal >= 20x at recall >= 0.95: {'met' if report['goal_met'] else 'NOT met'})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
