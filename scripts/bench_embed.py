"""Sentences/s of our two embedders against the same models in PyTorch, on CPU: the Flax
all-MiniLM-L6-v2 (SBERT baseline) and the T5 encoder that indexes the upstream pool (ReCross).

Both sides embed the same texts with the same batch size and max length, end to end, each in its
own process pinned to the same CPU cores (torch with that many threads). The PyTorch side does
what sentence-transformers does: sort by text length, pad each batch to its longest row,
mean-pool over non-padding tokens (and, for MiniLM, L2-normalise). JAX's compile time is measured
by a warm-up pass and reported apart; the throughput is the best of `--repeats` timed passes.

`--model minilm` tokenizes with the model's tokenizer on both sides. `--model t5-mini|t5-small`
builds a randomly initialised HF `T5ForConditionalGeneration` of that gin size, imports it with
`recross_jax.importers.import_hf_t5` (so both sides hold the same weights) and feeds both sides
the same token ids (one per whitespace word, hashed; EOS appended) to isolate the encoders: ours
is `retrieval.embed.T5EncoderEmbedder`, theirs `T5EncoderModel`.

    python scripts/bench_embed.py --n 2000 --batch_size 64 --max_length 256 --cores 2
    python scripts/bench_embed.py --model t5-small --n 2000
    python scripts/bench_embed.py --texts pool.jsonl   # real texts: JSONL with "inputs", or lines
    python scripts/bench_embed.py --dtype bfloat16     # both sides' activations in bfloat16

`--dtype bfloat16` computes both sides' activations in bfloat16: ours with float32 parameters
cast at each product (accumulated in float32), PyTorch's model converted with `.to(bfloat16)`.

Needs torch and transformers (the test extra). Prints one line per side, the speed ratio and
the agreement (min cosine) of the two sets of vectors.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import zlib

import numpy as np
from bench_workers import run_pinned

# gin/models sizes of the T5 sides: (emb_dim, mlp_dim, num_heads, head_dim, layers, vocab_size).
T5_SIZES = {"t5-mini": (256, 512, 4, 64, 4, 8192), "t5-small": (512, 1024, 6, 64, 8, 32128)}
EOS_ID = 1


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


def word_ids(text: str, vocab_size: int) -> list[int]:
    """The T5 sides' token ids: one per whitespace word, hashed into [2, vocab_size)."""
    return [2 + zlib.crc32(word.encode()) % (vocab_size - 2) for word in text.split()]


def save_hf_t5(size: str, seed: int, out_dir: str) -> None:
    """A randomly initialised HF T5 1.1 of `size`, saved where both workers read it."""
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    emb, mlp, heads, head_dim, layers, vocab = T5_SIZES[size]
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=vocab, d_model=emb, d_ff=mlp, num_heads=heads, d_kv=head_dim, num_layers=layers,
        num_decoder_layers=layers, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS_ID)
    transformers.T5ForConditionalGeneration(config).save_pretrained(out_dir)


def run_jax(texts: list[str], args: argparse.Namespace
            ) -> tuple[np.ndarray, tuple[float, float], float]:
    """(vectors, best (wall, CPU) seconds per pass, warm-up seconds) of our embedder."""
    # pylint: disable=import-outside-toplevel
    from recross_jax import partitioning
    partitioning.use_cpu_devices(args.devices)  # batches are sharded over them
    if args.model == "minilm":
        from recross_jax.retrieval.sentence import SentenceEmbedder
        embedder = SentenceEmbedder.from_minilm(max_length=args.max_length, batch_size=args.batch_size,
                                                dtype=args.dtype, progress=False,
                                                mesh=partitioning.create_mesh())
        encode = embedder.encode
    else:
        from recross_jax import importers
        from recross_jax.retrieval.embed import T5EncoderEmbedder
        config, params = importers.import_hf_t5(args.hf_dir)
        config = dataclasses.replace(config, dtype=args.dtype)
        embedder = T5EncoderEmbedder(config, params, lambda t: word_ids(t, config.vocab_size),
                                     EOS_ID, {}, max_length=args.max_length,
                                     batch_size=args.batch_size)
        encode = embedder.embed_texts
    warmup = _timed(lambda: encode(texts))[0]  # compiles every bucket shape needed
    return encode(texts), _best(lambda: encode(texts), args.repeats), warmup


def run_torch(texts: list[str], args: argparse.Namespace, threads: int
              ) -> tuple[np.ndarray, tuple[float, float], float]:
    """(vectors, best (wall, CPU) seconds per pass, warm-up seconds) of transformers' model."""
    # pylint: disable=import-outside-toplevel
    import torch
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel

    from recross_jax import assets
    torch.set_num_threads(threads)
    if args.model == "minilm":
        model_dir = assets.minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir).eval()

        def tokenize(batch_texts: list[str]) -> dict:
            return tokenizer(batch_texts, padding=True, truncation=True,
                             max_length=args.max_length, return_tensors="pt")
    else:
        model = T5EncoderModel.from_pretrained(args.hf_dir).eval()

        def tokenize(batch_texts: list[str]) -> dict:
            ids = [word_ids(t, model.config.vocab_size)[:args.max_length - 1] + [EOS_ID]
                   for t in batch_texts]
            tokens = torch.zeros((len(ids), max(map(len, ids))), dtype=torch.long)
            for i, row in enumerate(ids):
                tokens[i, :len(row)] = torch.tensor(row)
            return {"input_ids": tokens, "attention_mask": (tokens != 0).long()}

    model = model.to(getattr(torch, args.dtype))

    def encode() -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as sentence-transformers
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), args.batch_size):
                rows = order[start:start + args.batch_size]
                batch = tokenize([texts[i] for i in rows])
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if args.model == "minilm":
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.float().numpy()
        return out

    warmup = _timed(encode)[0]
    return encode(), _best(encode, args.repeats), warmup


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
        vectors, seconds, warmup = run_jax(texts, args)
    else:
        vectors, seconds, warmup = run_torch(texts, args, len(os.sched_getaffinity(0)))
    np.save(args.out, vectors)
    print(json.dumps({"wall": seconds[0], "cpu": seconds[1], "warmup": warmup, "n": len(texts)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", choices=("minilm", *T5_SIZES), default="minilm")
    parser.add_argument("--n", type=int, default=2000, help="number of texts")
    parser.add_argument("--texts", help="JSONL (with 'inputs') or text file; default synthetic")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--cores", type=int, default=2, help="CPU cores (and torch threads)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", type=int, default=1,
                        help="JAX CPU devices of our side (e.g. one per core; batches sharded over them)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="activation dtype of both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--hf_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    cores = sorted(os.sched_getaffinity(0))[:args.cores]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model != "minilm":
            args.hf_dir = os.path.join(tmp, "hf_t5")
            save_hf_t5(args.model, args.seed, args.hf_dir)
        for side in ("torch", "jax"):
            out = os.path.join(tmp, f"{side}.npy")
            command = [sys.executable, __file__, "--worker", side, "--out", out] + [
                f"--{k}={v}" for k, v in vars(args).items()
                if k not in ("worker", "out") and v is not None]
            results[side] = run_pinned(side, command, cores)
            results[side]["vectors"] = np.load(out)
    n = results["jax"]["n"]
    for side, name in (("torch", "PyTorch (transformers)"), ("jax", "ours (Flax, jit)")):
        r = results[side]
        print(f"{name:24s} {n / r['wall']:8.1f} sentences/s wall, {n / r['cpu']:8.1f} per CPU-s "
              f"({r['wall']:.2f} s per pass, {r['cpu']:.2f} CPU-s; first pass {r['warmup']:.2f} s)")
    a, b = results["torch"]["vectors"], results["jax"]["vectors"]
    cosine = ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()
    print(f"speed ratio ours/PyTorch: {results['torch']['wall'] / results['jax']['wall']:.2f}x "
          f"wall, {results['torch']['cpu'] / results['jax']['cpu']:.2f}x CPU time ({args.model}, n={n}, "
          f"batch_size={args.batch_size}, max_length={args.max_length}, cores={cores}, "
          f"{args.dtype}); "
          f"min cosine {cosine:.6f}")

if __name__ == "__main__":
    main()
