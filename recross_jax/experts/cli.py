"""`recross experts train | library | retrieve | merge | eval`: ELM from the command line.

- `train`: an adapter expert on one task's split, the backbone (a model directory) frozen;
  resumable (an expert directory that already holds this expert is left as it is).
- `library`: the expert library over expert directories, in the order given, each expert's
  S training instances embedded with all-MiniLM-L6-v2 (or `settings.embedder_dir`).
- `retrieve`: Retrieval-of-Experts for a target task (Q of its inputs); prints the winner and
  the votes as JSON.
- `merge`: the uniform average of experts of one backbone, saved as an expert.
- `eval`: rank-classification accuracy of the backbone with an expert (or alone) on a task.

Settings not given as flags come from gin (`experts.settings`). Bad input (an unknown
expert, an expert of another backbone, an empty library) ends with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import gin
import jax

# evaluate registers gin configurables, so it is imported before gin parses the flags.
from recross_jax import checkpoints, evaluate, finetune, gin_utils, partitioning, task_modules
from recross_jax.errors import UserError
from recross_jax.experts import checkpoint, expert, library, merging
from recross_jax.models import adapters

MERGED = "merged"


@gin.configurable(module="experts")
def settings(reduction: int = adapters.DEFAULT_REDUCTION, layer_norms: bool = True,
             cross_attention: bool = expert.ELM_FINETUNE.trainable.cross_attention,
             learning_rate: float = 1e-4, epochs: int = 5, batch_size: int = 8,
             max_examples: int = 50_000, instances_per_expert: int = library.INSTANCES_PER_EXPERT,
             queries_per_target: int = library.QUERIES_PER_TARGET, seed: int = 0,
             max_input_length: int = 512, max_target_length: int = 128,
             embedder_dir: str | None = None) -> dict[str, Any]:
    """ELM's settings (SPEC §3; gin-configurable).

    Args:
      reduction: the adapters' r (width d / r).
      layer_norms: experts also train (and own) the layer norms.
      cross_attention: experts also train (and own) the decoder's cross-attention (see
        `adapters.ExpertParams`).
      learning_rate, epochs, batch_size: the expert's training (constant rate, AdamW).
      max_examples: training examples per expert at most (the split's first ones).
      instances_per_expert: S, each expert's keys in the library.
      queries_per_target: Q, the target inputs Retrieval-of-Experts embeds.
      seed: adapter initialisation, batch order and the library's instance sample.
      max_input_length, max_target_length: token limits of inputs and targets.
      embedder_dir: a sentence-transformers directory to embed with; None: all-MiniLM-L6-v2.
    """
    return dict(reduction=reduction, layer_norms=layer_norms, cross_attention=cross_attention,
                learning_rate=learning_rate,
                epochs=epochs, batch_size=batch_size, max_examples=max_examples,
                instances_per_expert=instances_per_expert, queries_per_target=queries_per_target,
                seed=seed, max_input_length=max_input_length, max_target_length=max_target_length,
                embedder_dir=embedder_dir)


def examples_of(task: str, split: str, cfg: dict, max_examples: int | None
                ) -> list[evaluate.EvalExample]:
    """The first `max_examples` examples of a task's split, cut to `cfg`'s token limits."""
    return evaluate.load_examples(task, split, max_examples=max_examples,
                                  max_input_length=cfg["max_input_length"],
                                  max_target_length=cfg["max_target_length"])[0]


def rows_of(examples: Sequence[Any]) -> list[dict]:
    """The library's view of examples: their inputs and answer choices."""
    return [{"inputs": e.inputs, "answer_choices": e.answer_choices} for e in examples]


def load_backbone(model_dir: str) -> expert.Backbone:
    """The backbone saved in a model directory (its latest checkpoint)."""
    config, params = checkpoints.restore_model(model_dir)
    return expert.Backbone.of(config, params)


def make_embedder(cfg: dict) -> library.Embedder:
    """The library's sentence embedder: `cfg['embedder_dir']`, or all-MiniLM-L6-v2."""
    from recross_jax.retrieval import sentence  # pylint: disable=import-outside-toplevel
    if cfg["embedder_dir"] is None:
        return sentence.SentenceEmbedder.from_minilm(progress=False)
    return sentence.SentenceEmbedder.from_dir(cfg["embedder_dir"], progress=False)


def owned(cfg: dict) -> adapters.ExpertParams:
    """What experts of the settings `cfg` own."""
    return adapters.ExpertParams(layer_norms=cfg["layer_norms"],
                                 cross_attention=cfg["cross_attention"])


def training_settings(cfg: dict) -> finetune.FinetuneConfig:
    """ELM's expert training (`expert.ELM_FINETUNE`) with the settings `cfg`."""
    return dataclasses.replace(
        expert.ELM_FINETUNE, learning_rate=cfg["learning_rate"], batch_size=cfg["batch_size"],
        epochs=cfg["epochs"], seed=cfg["seed"], trainable=owned(cfg))


def trained(out: str, name: str) -> dict | None:
    """What `train` returned for the expert `name` already saved in `out`, or None if `out`
    holds no expert (one of another name is an error)."""
    if not os.path.isfile(os.path.join(out, checkpoint.MANIFEST)):
        return None
    manifest = checkpoint.read_manifest(out)
    if manifest["name"] != name:
        raise UserError(f"{out} holds expert {manifest['name']!r}, not {name!r}; "
                        "choose another --out")
    return {"expert": name, "out": out, "resumed": True, **manifest.get("metadata", {})}


def train(backbone: expert.Backbone, task: str, split: str, out: str, name: str,
          cfg: dict) -> dict:
    """Trains the expert `name` on the first `cfg['max_examples']` examples of a task's split
    and saves it in `out`; an expert already there is kept (resume)."""
    done = trained(out, name)
    if done is not None:
        return done
    examples = examples_of(task, split, cfg, cfg["max_examples"])
    pairs = [(e.input_tokens, e.target_tokens) for e in examples]
    start = time.perf_counter()
    params, history = expert.train_expert(backbone, pairs, cfg["reduction"],
                                          training_settings(cfg))
    metadata = {"task": task, "split": split, "examples": len(pairs), "steps": len(history),
                "final_loss": float(history[-1]["loss"]),
                "train_seconds": round(time.perf_counter() - start, 1)}
    checkpoint.save_expert(out, name, backbone, cfg["reduction"], params, owned(cfg), metadata)
    return {"expert": name, "out": out, **metadata}


def build_library(expert_dirs: Sequence[str], cfg: dict,
                  embedder: library.Embedder | None = None) -> library.ExpertLibrary:
    """The library of the experts in `expert_dirs`, in that order: S of the examples each was
    trained on (its manifest's task and split, the first `cfg['max_examples']`)."""
    if not expert_dirs:
        raise UserError("no expert directories given (--experts): the library would be empty")
    embedder = embedder or make_embedder(cfg)
    lib = library.ExpertLibrary.empty(embedder, cfg["instances_per_expert"])
    for directory in expert_dirs:
        manifest = checkpoint.read_manifest(directory)
        source = manifest.get("metadata", {})
        if "task" not in source:
            raise UserError(f"expert {directory} names no training task; it cannot be indexed")
        examples = examples_of(source["task"], source.get("split", "train"), cfg,
                               cfg["max_examples"])
        lib.add(manifest["name"], rows_of(examples), embedder, seed=cfg["seed"])
    return lib


def merge(backbone: expert.Backbone, expert_dirs: Sequence[str], out: str, name: str) -> dict:
    """Saves the uniform average of the experts in `expert_dirs` (one backbone, one kind of
    expert) as the expert `name` in `out`."""
    if not expert_dirs:
        raise UserError("no expert directories given (--experts): nothing to merge")
    manifests = [checkpoint.read_manifest(d) for d in expert_dirs]
    kinds = {(m["adapter_reduction"], checkpoint.owned_params(m)) for m in manifests}
    if len(kinds) > 1:
        raise UserError("cannot merge experts of different adapter_reduction, layer_norms or "
                        "cross_attention")
    reduction, owned_by_all = kinds.pop()
    trees = [adapters.split(checkpoint.load_expert(d, backbone)[1], owned_by_all)[0]
             for d in expert_dirs]
    names = [m["name"] for m in manifests]
    checkpoint.save_expert(out, name, backbone, reduction, merging.average(trees),
                           owned_by_all, {"merged": names})
    return {"expert": name, "merged": names, "out": out}


def _train(args: argparse.Namespace, cfg: dict) -> dict:
    name = args.name or f"{args.task}:{args.split}"
    return (trained(args.out, name)
            or train(load_backbone(args.backbone), args.task, args.split, args.out, name, cfg))


def _library(args: argparse.Namespace, cfg: dict) -> dict:
    lib = build_library(args.experts, cfg)
    lib.save(args.out)
    return {"experts": lib.experts, "keys": int(sum(lib.counts)), "out": args.out}


def _retrieve(args: argparse.Namespace, cfg: dict) -> dict:
    lib = library.ExpertLibrary.load(args.library)
    examples = examples_of(args.task, args.split, cfg, cfg["queries_per_target"])
    result = lib.retrieve(rows_of(examples), make_embedder(cfg))
    return {"task": args.task, "expert": result.expert, "votes": result.votes}


def _merge(args: argparse.Namespace, cfg: dict) -> dict:
    del cfg
    return merge(load_backbone(args.backbone), args.experts, args.out, args.name or MERGED)


def _eval(args: argparse.Namespace, cfg: dict) -> dict:
    backbone = load_backbone(args.backbone)
    config, params = (checkpoint.load_expert(args.expert, backbone) if args.expert
                      else (backbone.config, backbone.params))
    examples, vocabulary = evaluate.load_examples(
        args.task, args.split, max_examples=args.max_examples,
        max_input_length=cfg["max_input_length"], max_target_length=cfg["max_target_length"])
    results, _, _ = evaluate.evaluate_params(
        config, params, examples, vocabulary, decode=False, progress=False,
        mesh=partitioning.create_mesh(devices=jax.devices()[:1]))
    return {"task": args.task, "split": args.split, "expert": args.expert, **results}


def build_parser() -> argparse.ArgumentParser:
    """The parser of `recross experts`."""
    parser = argparse.ArgumentParser(prog="recross experts", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        gin_utils.add_gin_flags(sub)
        sub.add_argument("--tasks_module", action="append", default=None,
                         help="module registering tasks (repeatable)")
        sub.set_defaults(handler=handler)
        return sub

    sub = add("train", "train an adapter expert on a task's split (backbone frozen)", _train)
    sub.add_argument("--backbone", required=True, help="model directory of the backbone")
    sub.add_argument("--task", required=True)
    sub.add_argument("--split", default="train")
    sub.add_argument("--out", required=True, help="the expert's directory")
    sub.add_argument("--name", help="the expert's id (default TASK:SPLIT)")
    sub = add("library", "index experts' training instances (in the order given)", _library)
    sub.add_argument("--experts", nargs="*", default=[], help="expert directories")
    sub.add_argument("--out", required=True, help="the library's directory")
    sub = add("retrieve", "Retrieval-of-Experts for a target task", _retrieve)
    sub.add_argument("--library", required=True)
    sub.add_argument("--task", required=True)
    sub.add_argument("--split", default="validation")
    sub = add("merge", "average experts of one backbone into one expert", _merge)
    sub.add_argument("--backbone", required=True)
    sub.add_argument("--experts", nargs="*", default=[])
    sub.add_argument("--out", required=True)
    sub.add_argument("--name", help=f"the merged expert's id (default {MERGED!r})")
    sub = add("eval", "rank-classification accuracy with an expert (or the backbone alone)",
              _eval)
    sub.add_argument("--backbone", required=True)
    sub.add_argument("--expert", help="expert directory (default: none)")
    sub.add_argument("--task", required=True)
    sub.add_argument("--split", default="validation")
    sub.add_argument("--max_examples", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`recross experts ACTION ...`; prints the result as JSON. UserErrors propagate to the
    `recross` entry point."""
    args = build_parser().parse_args(argv)
    task_modules.import_task_modules(args.tasks_module)
    gin_utils.parse_gin_flags(args)
    print(json.dumps(args.handler(args, settings()), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"recross experts: error: {gin_utils.first_line(error)}", file=sys.stderr)
        sys.exit(2)
