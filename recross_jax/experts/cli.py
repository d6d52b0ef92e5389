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
from typing import Any, Sequence

import gin
import jax

# evaluate registers gin configurables, so it is imported before gin parses the flags.
from recross_jax import checkpoints, evaluate, gin_utils, partitioning, task_modules
from recross_jax.errors import UserError
from recross_jax.experts import checkpoint, expert, library, merging
from recross_jax.models import adapters

MERGED = "merged"


@gin.configurable(module="experts")
def settings(reduction: int = adapters.DEFAULT_REDUCTION, layer_norms: bool = True,
             learning_rate: float = 1e-4, epochs: int = 5, batch_size: int = 8,
             max_examples: int = 50_000, instances_per_expert: int = library.INSTANCES_PER_EXPERT,
             queries_per_target: int = library.QUERIES_PER_TARGET, seed: int = 0,
             max_input_length: int = 512, max_target_length: int = 128,
             embedder_dir: str | None = None) -> dict[str, Any]:
    """ELM's settings (SPEC §3; gin-configurable).

    Args:
      reduction: the adapters' r (width d / r).
      layer_norms: experts also train (and own) the layer norms.
      learning_rate, epochs, batch_size: the expert's training (constant rate, AdamW).
      max_examples: training examples per expert at most (the split's first ones).
      instances_per_expert: S, each expert's keys in the library.
      queries_per_target: Q, the target inputs Retrieval-of-Experts embeds.
      seed: adapter initialisation, batch order and the library's instance sample.
      max_input_length, max_target_length: token limits of inputs and targets.
      embedder_dir: a sentence-transformers directory to embed with; None: all-MiniLM-L6-v2.
    """
    return dict(reduction=reduction, layer_norms=layer_norms, learning_rate=learning_rate,
                epochs=epochs, batch_size=batch_size, max_examples=max_examples,
                instances_per_expert=instances_per_expert, queries_per_target=queries_per_target,
                seed=seed, max_input_length=max_input_length, max_target_length=max_target_length,
                embedder_dir=embedder_dir)


def _examples(task: str, split: str, cfg: dict, max_examples: int) -> list:
    return evaluate.load_examples(task, split, max_examples=max_examples,
                                  max_input_length=cfg["max_input_length"],
                                  max_target_length=cfg["max_target_length"])[0]


def _rows(examples: Sequence[Any]) -> list[dict]:
    return [{"inputs": e.inputs, "answer_choices": e.answer_choices} for e in examples]


def _backbone(model_dir: str) -> expert.Backbone:
    config, params = checkpoints.restore_model(model_dir)
    return expert.Backbone.of(config, params)


def _embedder(cfg: dict) -> library.Embedder:
    from recross_jax.retrieval import sentence  # pylint: disable=import-outside-toplevel
    if cfg["embedder_dir"] is None:
        return sentence.SentenceEmbedder.from_minilm(progress=False)
    return sentence.SentenceEmbedder.from_dir(cfg["embedder_dir"], progress=False)


def _train(args: argparse.Namespace, cfg: dict) -> dict:
    name = args.name or f"{args.task}:{args.split}"
    manifest_path = os.path.join(args.out, checkpoint.MANIFEST)
    if os.path.isfile(manifest_path):
        manifest = checkpoint.read_manifest(args.out)
        if manifest["name"] != name:
            raise UserError(f"{args.out} holds expert {manifest['name']!r}, not {name!r}; "
                            "choose another --out")
        return {"expert": name, "out": args.out, "resumed": True}
    backbone = _backbone(args.backbone)
    examples = _examples(args.task, args.split, cfg, cfg["max_examples"])
    owned = adapters.ExpertParams(layer_norms=cfg["layer_norms"])
    training_settings = dataclasses.replace(
        expert.ELM_FINETUNE, learning_rate=cfg["learning_rate"], batch_size=cfg["batch_size"],
        epochs=cfg["epochs"], seed=cfg["seed"], trainable=owned)
    pairs = [(e.input_tokens, e.target_tokens) for e in examples]
    params, history = expert.train_expert(backbone, pairs, cfg["reduction"], training_settings)
    metadata = {"task": args.task, "split": args.split, "examples": len(pairs),
                "steps": len(history), "final_loss": float(history[-1]["loss"])}
    checkpoint.save_expert(args.out, name, backbone, cfg["reduction"], params, owned, metadata)
    return {"expert": name, "out": args.out, **metadata}


def _library(args: argparse.Namespace, cfg: dict) -> dict:
    if not args.experts:
        raise UserError("no expert directories given (--experts): the library would be empty")
    embedder = _embedder(cfg)
    lib = library.ExpertLibrary.empty(embedder, cfg["instances_per_expert"])
    for directory in args.experts:
        manifest = checkpoint.read_manifest(directory)
        source = manifest.get("metadata", {})
        if "task" not in source:
            raise UserError(f"expert {directory} names no training task; it cannot be indexed")
        examples = _examples(source["task"], source.get("split", "train"), cfg,
                             cfg["max_examples"])
        lib.add(manifest["name"], _rows(examples), embedder, seed=cfg["seed"])
    lib.save(args.out)
    return {"experts": lib.experts, "keys": int(sum(lib.counts)), "out": args.out}


def _retrieve(args: argparse.Namespace, cfg: dict) -> dict:
    lib = library.ExpertLibrary.load(args.library)
    examples = _examples(args.task, args.split, cfg, cfg["queries_per_target"])
    result = lib.retrieve(_rows(examples), _embedder(cfg))
    return {"task": args.task, "expert": result.expert, "votes": result.votes}


def _merge(args: argparse.Namespace, cfg: dict) -> dict:
    del cfg
    if not args.experts:
        raise UserError("no expert directories given (--experts): nothing to merge")
    backbone = _backbone(args.backbone)
    manifests = [checkpoint.read_manifest(d) for d in args.experts]
    reductions = {m["adapter_reduction"] for m in manifests}
    norms = {m["layer_norms"] for m in manifests}
    if len(reductions) > 1 or len(norms) > 1:
        raise UserError("cannot merge experts of different adapter_reduction or layer_norms")
    owned = adapters.ExpertParams(layer_norms=norms.pop())
    trees = [adapters.split(checkpoint.load_expert(d, backbone)[1], owned)[0]
             for d in args.experts]
    names = [m["name"] for m in manifests]
    checkpoint.save_expert(args.out, args.name or MERGED, backbone, reductions.pop(),
                           merging.average(trees), owned, {"merged": names})
    return {"expert": args.name or MERGED, "merged": names, "out": args.out}


def _eval(args: argparse.Namespace, cfg: dict) -> dict:
    backbone = _backbone(args.backbone)
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
