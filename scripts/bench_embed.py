"""Sentences/s of our Flax all-MiniLM-L6-v2 embedder against the same model in PyTorch, on CPU.

Both sides embed the same texts with the same batch size and max length, end to end (tokenizing
included), each in its own process pinned to the same CPU cores (torch with that many threads).
The PyTorch side does what sentence-transformers does: sort by text length, pad each batch to its
longest row, mean-pool, L2-normalise. JAX's compile time is measured by a warm-up pass and
reported apart; the throughput is the best of `--repeats` timed passes.

    python scripts/bench_embed.py --n 2000 --batch_size 64 --max_length 256 --cores 2
    python scripts/bench_embed.py --texts pool.jsonl   # real texts: JSONL with "inputs", or lines

Needs torch and transformers (the test extra). Prints one line per side, the speed ratio and
the agreement (min cosine) of the two sets of vectors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def synthetic_texts(n: int, seed: int) -> list[str]:
    """`n` texts of English-like words with log-normal lengths (median 30 words, up to 400)."""
    rng = np.random.default_rng(seed)
    words = ("the of and to in is was for that on with as by at from it an be this which or are "
             "not but have had one all were there what when can who will more if out so up said "
             "question answer choose following sentence premise hypothesis true false context "
             "story movie review positive negative paragraph article summary title topic claim "
             "evidence because however therefore people world time year water city music game "
             "science history river mountain teacher student doctor market language computer "
             "football election summer village garden kitchen window morning evening").split()
    lengths = np.clip(rng.lognormal(np.log(30), 0.8, n).astype(int), 1, 400)
    texts = []
    for length in lengths:
        sentence = " ".join(rng.choice(words, length))
        texts.append(sentence[0].upper() + sentence[1:] + ("?" if rng.random() < 0.3 else "."))
    return texts


def read_texts(path: str, n: int) -> list[str]:
    """The first `n` texts of a JSONL file with an "inputs" field, or of a plain-text file."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if path.endswith(".jsonl"):
                line = json.loads(line)["inputs"]
            texts.append(line)
            if len(texts) == n:
                break
    return texts


def run_jax(texts: list[str], batch_size: int, max_length: int, repeats: int
            ) -> tuple[np.ndarray, tuple[float, float], float]:
    """(vectors, best (wall, CPU) seconds per pass, warm-up seconds) of our embedder."""
    from recross_jax.retrieval.sentence import SentenceEmbedder  # pylint: disable=import-outside-toplevel
    embedder = SentenceEmbedder.from_minilm(max_length=max_length, batch_size=batch_size,
                                            progress=False)
    warmup = _timed(lambda: embedder.encode(texts))[0]  # compiles every bucket shape needed
    return embedder.encode(texts), _best(lambda: embedder.encode(texts), repeats), warmup


def run_torch(texts: list[str], batch_size: int, max_length: int, repeats: int, threads: int
              ) -> tuple[np.ndarray, tuple[float, float], float]:
    """(vectors, best (wall, CPU) seconds per pass, warm-up seconds) of transformers' BERT."""
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import AutoModel, AutoTokenizer  # pylint: disable=import-outside-toplevel

    from recross_jax import assets  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    model_dir = assets.minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def encode() -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as sentence-transformers
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
        return out

    warmup = _timed(encode)[0]
    return encode(), _best(encode, repeats), warmup


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _best(fn, repeats: int) -> tuple[float, float]:
    """The fastest of `repeats` calls by wall time, and the least CPU time of any of them.

    On a shared machine the wall time includes waiting for the cores; the CPU time does not.
    """
    times = [_timed(fn) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def worker(args: argparse.Namespace) -> None:
    """One side of the benchmark, in a process already pinned to its cores."""
    texts = read_texts(args.texts, args.n) if args.texts else synthetic_texts(args.n, args.seed)
    if args.worker == "jax":
        vectors, seconds, warmup = run_jax(texts, args.batch_size, args.max_length, args.repeats)
    else:
        vectors, seconds, warmup = run_torch(texts, args.batch_size, args.max_length,
                                             args.repeats, len(os.sched_getaffinity(0)))
    np.save(args.out, vectors)
    print(json.dumps({"wall": seconds[0], "cpu": seconds[1], "warmup": warmup, "n": len(texts)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=2000, help="number of texts")
    parser.add_argument("--texts", help="JSONL (with 'inputs') or text file; default synthetic")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--cores", type=int, default=2, help="CPU cores (and torch threads)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    cores = sorted(os.sched_getaffinity(0))[:args.cores]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("torch", "jax"):
            out = os.path.join(tmp, f"{side}.npy")
            command = [sys.executable, __file__, "--worker", side, "--out", out] + [
                f"--{k}={v}" for k, v in vars(args).items()
                if k not in ("worker", "out") and v is not None]
            env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="true")
            proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                                  preexec_fn=lambda: os.sched_setaffinity(0, cores))
            if proc.returncode != 0:
                sys.exit(f"{side} worker failed:\n{proc.stderr[-3000:]}")
            results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[side]["vectors"] = np.load(out)
    n = results["jax"]["n"]
    for side, name in (("torch", "PyTorch (transformers)"), ("jax", "ours (Flax, jit)")):
        r = results[side]
        print(f"{name:24s} {n / r['wall']:8.1f} sentences/s wall, {n / r['cpu']:8.1f} per CPU-s "
              f"({r['wall']:.2f} s per pass, {r['cpu']:.2f} CPU-s; first pass {r['warmup']:.2f} s)")
    cosine = (results["torch"]["vectors"] * results["jax"]["vectors"]).sum(axis=1).min()
    print(f"speed ratio ours/PyTorch: {results['torch']['wall'] / results['jax']['wall']:.2f}x "
          f"wall, {results['torch']['cpu'] / results['jax']['cpu']:.2f}x CPU time (n={n}, "
          f"batch_size={args.batch_size}, max_length={args.max_length}, cores={cores}); "
          f"min cosine {cosine:.6f}")

if __name__ == "__main__":
    main()
