"""Train-step and scoring throughput of our Flax models against HF transformers' PyTorch ones, on
CPU, and our train step's model FLOP utilisation (MFU).

Both sides build the same network: T5 1.1 sizes (gated GELU, untied output layer) against
`T5ForConditionalGeneration`, or `minilm2minilm` (BERT2BERT of all-MiniLM-L6-v2's shape, as
gin/models/minilm2minilm.gin; randomly initialised, as speed does not depend on the weights)
against `EncoderDecoderModel` of two `BertModel`s. Both train with AdamW on the same random
batches (no padding, so every position is a token) and score the same batches (per-example
summed target log-likelihood, no gradient). MFU = the train step's model FLOPs (3 × the
forward's matmul and attention FLOPs, causal attention counted in full) per second over the
best float32 rate of one jitted 2048 × 2048 matmul on the same cores, measured in the JAX worker.
Each side runs in its own process pinned to the same CPU cores (torch with that many threads).
JAX's compile time is measured by a warm-up step and reported apart; throughput is that of the
fastest timed step (the least disturbed by other load on the machine). Peak memory is the
process's peak RSS and its growth over the RSS after the imports.

    python scripts/bench_train.py --sizes mini small --batch_size 8 --inputs 128 --targets 32
    python scripts/bench_train.py --sizes minilm2minilm --batch_size 16 --inputs 256 --targets 32

Needs torch and transformers (the test extra). Prints one line per size, side and phase, then the
ratios ours / reference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# The gin/models sizes: (emb_dim, mlp_dim, num_heads, head_dim, layers, vocab_size).
SIZES = {
    "tiny": (32, 64, 4, 8, 2, 8192),
    "mini": (256, 512, 4, 64, 4, 8192),
    "small": (512, 1024, 6, 64, 8, 32128),
    "base": (768, 2048, 12, 64, 12, 32128),
}
# BERT2BERT of all-MiniLM-L6-v2's shape: hidden, intermediate, heads, head dim, layers, WordPiece.
BERT2BERT = {"minilm2minilm": (384, 1536, 12, 32, 6, 30522)}


def dims(size: str) -> tuple[int, int, int, int, int, int]:
    return {**SIZES, **BERT2BERT}[size]


def train_flops(size: str, batch: int, inputs: int, targets: int) -> float:
    """Model FLOPs of one train step: 3 × the forward's matmuls and attention products."""
    d, ff, heads, head_dim, layers, vocab = dims(size)
    inner = heads * head_dim
    ff_mats = 2 if size in BERT2BERT else 3  # T5 1.1's gated GELU has two input projections
    dense = 2 * (4 * d * inner + ff_mats * d * ff)  # per token and layer: attention + MLP
    encoder = inputs * layers * (dense + 4 * inputs * inner)
    decoder = (targets * layers * (dense + 2 * 2 * d * inner + 4 * (targets + inputs) * inner)
               + inputs * layers * 2 * 2 * d * inner)  # cross-attention's queries/output, keys/values
    head = targets * 2 * d * (vocab + (d if size in BERT2BERT else 0))  # BERT's head transform
    return 3.0 * batch * (encoder + decoder + head)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batches(args: argparse.Namespace, vocab: int) -> list[dict]:
    """Random full-length batches; decoder inputs are the targets shifted right behind 0."""
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(args.steps + 1):
        inputs = rng.integers(2, vocab, (args.batch_size, args.inputs), dtype=np.int32)
        targets = rng.integers(2, vocab, (args.batch_size, args.targets), dtype=np.int32)
        shifted = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
        batches.append({"encoder_input_tokens": inputs, "decoder_input_tokens": shifted,
                        "decoder_target_tokens": targets,
                        "decoder_loss_weights": np.ones_like(targets, np.float32)})
    return batches


def run_jax(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    from bench_mining import matmul_gflops  # the same peak rate as the other benchmarks

    from recross_jax import models, partitioning, training

    partitioning.use_cpu_devices(args.devices)  # the mesh's data axis spans them
    base_rss = peak_rss_mib()
    emb, mlp, heads, head_dim, layers, vocab = dims(args.size)
    if args.size in BERT2BERT:
        config = models.Bert2BertConfig(
            vocab_size=vocab, hidden_size=emb, intermediate_size=mlp, num_attention_heads=heads,
            num_encoder_layers=layers, num_decoder_layers=layers,
            hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    else:
        config = models.T5Config(vocab_size=vocab, emb_dim=emb, mlp_dim=mlp, num_heads=heads,
                                 head_dim=head_dim, num_encoder_layers=layers,
                                 num_decoder_layers=layers, dropout_rate=args.dropout)
    model = models.build(config)
    mesh = partitioning.create_mesh(1)
    optimizer = training.make_optimizer("adamw", args.learning_rate)
    shardings = training.state_shardings(training.abstract_params(config), optimizer, mesh)
    params = training.init_params(config, 0, mesh)
    state = jax.jit(training.TrainState.create, static_argnums=(1,),
                    out_shardings=shardings)(params, optimizer)
    # The reference's loss: plain token cross entropy, mean over tokens.
    step = training.make_train_step(model, optimizer, z_loss=0.0, mesh=mesh,
                                    state_shardings=shardings)
    batches = [training.put_batch(b, mesh) for b in make_batches(args, vocab)]

    @jax.jit
    def score(params, batch):
        logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], batch["decoder_target_tokens"])
        log_probs = jax.nn.log_softmax(logits)
        token = jnp.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)
        return token[..., 0].sum(-1)

    start = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    train_times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        train_times.append(time.perf_counter() - start)
    jax.block_until_ready(score(state.params, batches[0]))
    score_times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        jax.block_until_ready(score(state.params, batch))
        score_times.append(time.perf_counter() - start)
    return {"train_s": min(train_times), "score_s": min(score_times),
            "compile_s": compile_s, "loss": float(metrics["loss"]),
            "peak_rss_mib": peak_rss_mib(), "rss_growth_mib": peak_rss_mib() - base_rss,
            "matmul_gflops": matmul_gflops()}


def run_torch(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    torch.set_num_threads(args.cores)
    torch.manual_seed(0)
    base_rss = peak_rss_mib()
    emb, mlp, heads, head_dim, layers, vocab = dims(args.size)
    if args.size in BERT2BERT:
        bert = dict(vocab_size=vocab, hidden_size=emb, intermediate_size=mlp,
                    num_attention_heads=heads, num_hidden_layers=layers,
                    hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
        model = transformers.EncoderDecoderModel(
            encoder=transformers.BertModel(transformers.BertConfig(**bert)),
            decoder=transformers.BertLMHeadModel(transformers.BertConfig(
                **bert, is_decoder=True, add_cross_attention=True)))
        model.config.decoder_start_token_id, model.config.pad_token_id = 101, 0
    else:
        config = transformers.T5Config(
            vocab_size=vocab, d_model=emb, d_ff=mlp, num_heads=heads, d_kv=head_dim,
            num_layers=layers, num_decoder_layers=layers, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, dropout_rate=args.dropout, decoder_start_token_id=0,
            pad_token_id=0)
        model = transformers.T5ForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    batches = [{k: torch.from_numpy(v).long() for k, v in b.items() if k != "decoder_loss_weights"}
               for b in make_batches(args, vocab)]

    def train_step(batch):
        model.train()
        out = model(input_ids=batch["encoder_input_tokens"],
                    decoder_input_ids=batch["decoder_input_tokens"],
                    labels=batch["decoder_target_tokens"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss)

    @torch.no_grad()
    def score(batch):
        model.eval()
        logits = model(input_ids=batch["encoder_input_tokens"],
                       decoder_input_ids=batch["decoder_input_tokens"]).logits
        token = torch.log_softmax(logits, -1).gather(-1, batch["decoder_target_tokens"][..., None])
        return token[..., 0].sum(-1)

    train_step(batches[0])
    train_times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        loss = train_step(batch)
        train_times.append(time.perf_counter() - start)
    score(batches[0])
    score_times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        score(batch)
        score_times.append(time.perf_counter() - start)
    return {"train_s": min(train_times), "score_s": min(score_times),
            "compile_s": 0.0, "loss": loss,
            "peak_rss_mib": peak_rss_mib(), "rss_growth_mib": peak_rss_mib() - base_rss}


def worker(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, set(range(args.cores)))
    result = run_jax(args) if args.worker == "jax" else run_torch(args)
    print("RESULT " + json.dumps(result))


def launch(side: str, size: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--size", size,
           "--batch_size", str(args.batch_size), "--inputs", str(args.inputs),
           "--targets", str(args.targets), "--steps", str(args.steps),
           "--cores", str(args.cores), "--dropout", str(args.dropout),
           "--learning_rate", str(args.learning_rate), "--seed", str(args.seed),
           "--devices", str(args.devices)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"{side} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = sorted({**SIZES, **BERT2BERT})
    parser.add_argument("--sizes", nargs="+", default=["mini", "small"], choices=sizes)
    parser.add_argument("--size", default="mini", choices=sizes, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=1,
                        help="JAX CPU devices of our side (e.g. one per core; batches sharded over them)")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    tokens = args.batch_size * (args.inputs + args.targets)
    print(f"batch {args.batch_size} x ({args.inputs} + {args.targets}) tokens, {args.cores} "
          f"cores, {args.steps} timed steps, our devices {args.devices}")
    for size in args.sizes:
        results = {side: launch(side, size, args) for side in ("jax", "torch")}
        for side, r in results.items():
            print(f"{size:5s} {side:5s} train {tokens / r['train_s']:9.0f} tok/s  score "
                  f"{tokens / r['score_s']:9.0f} tok/s  compile {r['compile_s']:5.1f} s  peak "
                  f"RSS {r['peak_rss_mib']:6.0f} MiB (+{r['rss_growth_mib']:.0f})  loss "
                  f"{r['loss']:.3f}")
        ours, ref = results["jax"], results["torch"]
        print(f"{size:5s} ratio ours/torch: train {ref['train_s'] / ours['train_s']:.2f}x  "
              f"score {ref['score_s'] / ours['score_s']:.2f}x  peak RSS "
              f"{ours['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x")
        gflops = train_flops(size, args.batch_size, args.inputs, args.targets) / ours["train_s"] / 1e9
        print(f"{size:5s} ours: {gflops:.1f} model GFLOP/s in training, matmul peak "
              f"{ours['matmul_gflops']:.1f} GFLOP/s, MFU {100 * gflops / ours['matmul_gflops']:.1f}%")


if __name__ == "__main__":
    main()
