"""`recross experts train | library | retrieve | merge | eval`: ELM from the command line.

- `train`: an adapter expert on one task's split, the backbone (a model directory) frozen; with
  `--template NAME` on that prompt template's examples only (a prompt expert), with
  `--per_template` one prompt expert per template of the split in `OUT/<template-slug>/`, with
  `--full` a full fine-tune expert (every parameter). Resumable: an expert directory that
  already holds its expert is left as it is. Several adapter experts train in one vmapped,
  jitted step when `settings.stacked`.
- `library`: the expert library over expert directories, in the order given, each expert's
  S training instances (its template's only, for a prompt expert) embedded with
  all-MiniLM-L6-v2 (or `settings.embedder_dir`).
- `retrieve`: Retrieval-of-Experts for a target task (Q of its inputs); prints the winner and
  the votes as JSON.
- `merge`: the uniform average of adapter experts of one backbone, or (`--task_vectors`) the
  task-vector merge θ_pre + Σ λ_i τ_i of full fine-tune experts, λ_i = 1/N or one shared λ of
  `--lambda_grid` chosen on held-out examples of the merged experts' own training tasks; saved
  as an expert.
- `eval`: rank-classification accuracy of the backbone with an expert (or alone) on a task.

Settings not given as flags come from gin (`experts.settings`). Bad input (an unknown
expert, an expert of another backbone, an empty library) ends with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

import gin
import jax
import numpy as np

# evaluate registers gin configurables, so it is imported before gin parses the flags.
from recross_jax import checkpoints, corpus, evaluate, finetune, gin_utils, partitioning, task_modules
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
             embedder_dir: str | None = None, stacked: bool = True,
             stack_size: int = 8) -> dict[str, Any]:
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
      stacked: adapter experts trained by one command share one vmapped, jitted step
        (`expert.train_experts`; scripts/bench_experts.py measures it against one after
        another).
      stack_size: experts trained together at most; each such batch is saved when it ends, so
        an interrupted command (e.g. `--per_template` over 13 templates) loses one batch at most.
    """
    if isinstance(stack_size, bool) or not isinstance(stack_size, int) or stack_size < 1:
        raise UserError(f"experts.settings.stack_size must be a positive integer, got {stack_size!r}")
    return dict(reduction=reduction, layer_norms=layer_norms, cross_attention=cross_attention,
                learning_rate=learning_rate,
                epochs=epochs, batch_size=batch_size, max_examples=max_examples,
                instances_per_expert=instances_per_expert, queries_per_target=queries_per_target,
                seed=seed, max_input_length=max_input_length, max_target_length=max_target_length,
                embedder_dir=embedder_dir, stacked=stacked, stack_size=stack_size)


def template_of(example: evaluate.EvalExample) -> str:
    """The prompt template of an example, from its id "dataset|split|template|#n"."""
    parts = example.example_id.split("|")
    if len(parts) < 4 or not parts[-1].startswith("#"):
        raise UserError(f"example id {example.example_id!r} names no template (expected "
                        "'dataset|split|template|#n')")
    return "|".join(parts[2:-1])


def by_template(examples: Sequence[evaluate.EvalExample]
                ) -> dict[str, list[evaluate.EvalExample]]:
    """The examples of each template, templates in the order they first appear."""
    groups: dict[str, list[evaluate.EvalExample]] = {}
    for example in examples:
        groups.setdefault(template_of(example), []).append(example)
    return groups


def template_slugs(templates: Sequence[str]) -> dict[str, str]:
    """A directory name for each template: its words, lower case, joined by '_' (with a digest
    of the name where two templates would share one)."""
    plain = {t: re.sub(r"[^a-z0-9]+", "_", t.lower()).strip("_") or "template"
             for t in templates}
    shared = {s for s in plain.values() if list(plain.values()).count(s) > 1}
    return {t: f"{s}_{hashlib.sha256(t.encode()).hexdigest()[:8]}" if s in shared else s
            for t, s in plain.items()}


def examples_of(task: str, split: str, cfg: dict, max_examples: int | None,
                template: str | None = None) -> list[evaluate.EvalExample]:
    """The first `max_examples` examples of a task's split (of its `template` only, when
    given), cut to `cfg`'s token limits."""
    examples = evaluate.load_examples(task, split,
                                      max_examples=max_examples if template is None else None,
                                      max_input_length=cfg["max_input_length"],
                                      max_target_length=cfg["max_target_length"])[0]
    if template is None:
        return examples
    groups = by_template(examples)
    if template not in groups:
        raise UserError(f"task {task!r} split {split!r} has no examples of template "
                        f"{template!r} (templates: {', '.join(map(repr, groups))})")
    return groups[template][:max_examples]


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


@dataclasses.dataclass(frozen=True)
class Job:
    """An expert to train: its directory, id, training examples and what its manifest records
    of them (task, split, template)."""

    out: str
    name: str
    examples: Sequence[evaluate.EvalExample]
    source: dict


def train_jobs(backbone: expert.Backbone, jobs: Sequence[Job], cfg: dict,
               full: bool = False) -> list[dict]:
    """Trains and saves every expert of `jobs` whose directory does not hold it yet: adapter
    experts (together in one stacked step when `cfg['stacked']`), or full fine-tunes (`full`,
    one after another). Returns what each job's expert is, in order. Each manifest records the
    run that trained it: `train_seconds` (its wall time) and `trained_together` (its experts)."""
    results: list[dict | None] = [trained(job.out, job.name) for job in jobs]
    todo = [i for i, done in enumerate(results) if done is None]
    settings = training_settings(cfg)
    pair_sets = [[(e.input_tokens, e.target_tokens) for e in jobs[i].examples] for i in todo]
    # Runs of experts trained together (and then saved): stack_size at a time when stacked,
    # else one by one.
    size = cfg["stack_size"] if cfg["stacked"] and not full else 1
    runs = [list(range(k, min(k + size, len(todo)))) for k in range(0, len(todo), size)]
    for run in runs:
        start = time.perf_counter()
        if full:
            fitted = [expert.train_full_expert(backbone, pair_sets[run[0]], settings)]
        else:
            fitted = expert.train_experts(backbone, [pair_sets[k] for k in run],
                                          cfg["reduction"], settings, stacked=cfg["stacked"])
        seconds = round(time.perf_counter() - start, 1)
        for k, (params, history) in zip(run, fitted):
            job = jobs[todo[k]]
            metadata = {**job.source, "examples": len(job.examples), "steps": len(history),
                        "final_loss": float(history[-1]["loss"]), "train_seconds": seconds,
                        "trained_together": len(run)}
            if full:
                checkpoint.save_full_expert(job.out, job.name, backbone, params, metadata)
            else:
                checkpoint.save_expert(job.out, job.name, backbone, cfg["reduction"], params,
                                       owned(cfg), metadata)
            results[todo[k]] = {"expert": job.name, "out": job.out,
                                "kind": checkpoint.FULL if full else checkpoint.ADAPTER,
                                **metadata}
    return results


def train(backbone: expert.Backbone, task: str, split: str, out: str, name: str,
          cfg: dict, template: str | None = None, full: bool = False) -> dict:
    """Trains the expert `name` on the first `cfg['max_examples']` examples of a task's split
    (of its `template` only, when given; a full fine-tune when `full`) and saves it in `out`;
    an expert already there is kept (resume)."""
    done = trained(out, name)
    if done is not None:
        return done
    source = {"task": task, "split": split, **({"template": template} if template else {})}
    examples = examples_of(task, split, cfg, cfg["max_examples"], template)
    return train_jobs(backbone, [Job(out, name, examples, source)], cfg, full)[0]


def template_jobs(task: str, split: str, out: str, cfg: dict) -> list[Job]:
    """One prompt expert per template of a task's split, `OUT/<template-slug>/` each, trained
    on the template's first `cfg['max_examples']` examples."""
    groups = by_template(examples_of(task, split, cfg, None))
    slugs = template_slugs(list(groups))
    return [Job(os.path.join(out, slugs[t]), f"{task}:{split}:{t}",
                examples[:cfg["max_examples"]], {"task": task, "split": split, "template": t})
            for t, examples in groups.items()]


def build_library(expert_dirs: Sequence[str], cfg: dict,
                  embedder: library.Embedder | None = None) -> library.ExpertLibrary:
    """The library of the experts in `expert_dirs`, in that order: S of the examples each was
    trained on (its manifest's task, split and template, the first `cfg['max_examples']`)."""
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
                               cfg["max_examples"], source.get("template"))
        lib.add(manifest["name"], rows_of(examples), embedder, seed=cfg["seed"])
    return lib


def merge(backbone: expert.Backbone, expert_dirs: Sequence[str], out: str, name: str,
          lambda_grid: Sequence[float] | None = None,
          score: Callable[[Any], float] | None = None) -> dict:
    """Saves the merge of the experts in `expert_dirs` (one backbone, one kind of expert) as the
    expert `name` in `out`: adapter experts are averaged uniformly; full fine-tune experts are
    merged as task vectors (`merge_task_vectors`, with `lambda_grid` and `score`)."""
    if not expert_dirs:
        raise UserError("no expert directories given (--experts): nothing to merge")
    manifests = [checkpoint.read_manifest(d) for d in expert_dirs]
    kinds = {checkpoint.kind_of(m) for m in manifests}
    if len(kinds) > 1:
        full = [m["name"] for m in manifests if checkpoint.kind_of(m) == checkpoint.FULL]
        raise UserError(f"cannot merge adapter and full fine-tune experts (full: "
                        f"{', '.join(full)}); merge each kind on its own")
    if kinds == {checkpoint.FULL}:
        return merge_task_vectors(backbone, expert_dirs, out, name, lambda_grid, score)
    if lambda_grid is not None:
        raise UserError("task-vector weights (--lambda_grid) apply to full fine-tune experts "
                        "(train them with --full); these are adapter experts")
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


def merge_task_vectors(backbone: expert.Backbone, expert_dirs: Sequence[str], out: str,
                       name: str, lambda_grid: Sequence[float] | None = None,
                       score: Callable[[Any], float] | None = None) -> dict:
    """Saves θ_pre + Σ λ_i τ_i of the full fine-tune experts in `expert_dirs` (τ_i = θ_i − θ_pre,
    θ_pre the backbone's parameters) as the full expert `name` in `out`: λ_i = 1/N without a
    grid; with `lambda_grid`, the one shared λ whose merge `score`s highest (e.g.
    `heldout_score`). The manifest records the λs and, with a grid, every λ's score."""
    manifests = [checkpoint.read_manifest(d) for d in expert_dirs]
    if any(checkpoint.kind_of(m) != checkpoint.FULL for m in manifests):
        raise UserError("task vectors are differences of full fine-tunes: "
                        f"{', '.join(m['name'] for m in manifests)} must all be full experts")
    names = [m["name"] for m in manifests]
    tuned = [checkpoint.load_expert(d, backbone)[1] for d in expert_dirs]
    metadata: dict[str, Any] = {"merged": names, "method": "task_vectors"}
    if lambda_grid is None:
        params = merging.task_vector_merge(backbone.params, tuned)
        metadata["lambdas"] = [1.0 / len(tuned)] * len(tuned)
    else:
        if score is None:
            raise UserError("choosing λ from a grid needs a held-out score")
        best, params, scores = merging.tune_lambda(backbone.params, tuned, score, lambda_grid)
        metadata.update(lambdas=[best] * len(tuned), lambda_grid=list(lambda_grid),
                        lambda_scores={str(k): v for k, v in scores.items()},
                        **getattr(score, "description", {}))
    checkpoint.save_full_expert(out, name, backbone, params, metadata)
    return {"expert": name, "out": out, **metadata}


@dataclasses.dataclass(frozen=True)
class HeldoutScore:
    """Mean rank-classification accuracy of parameters (of `config`'s network) over held-out
    example sets {task: (examples, vocabulary)}; build it with `heldout_score`."""

    config: Any
    sets: dict[str, tuple[list[evaluate.EvalExample], Any]]
    split: str

    def __call__(self, params: Any) -> float:
        mesh = partitioning.create_mesh(devices=jax.devices()[:1])
        return float(np.mean([evaluate.evaluate_params(
            self.config, params, examples, vocabulary, decode=False, progress=False,
            mesh=mesh)[0]["accuracy"] for examples, vocabulary in self.sets.values()]))

    @property
    def description(self) -> dict:
        """What it scores, as a merged expert's manifest records it."""
        return {"heldout_split": self.split, "heldout_examples": {
            task: len(examples) for task, (examples, _) in self.sets.items()}}


def heldout_score(backbone: expert.Backbone, expert_dirs: Sequence[str], cfg: dict,
                  examples_per_task: int, split: str = "validation") -> HeldoutScore:
    """The score of merges of the experts in `expert_dirs`: over their training tasks, each on
    the first `examples_per_task` labeled examples of its `split` that share no raw example
    with its training split (never a target's)."""
    if examples_per_task < 1:
        raise UserError(f"--heldout_examples must be positive, got {examples_per_task}")
    tasks: dict[str, str] = {}
    for directory in expert_dirs:
        source = checkpoint.read_manifest(directory).get("metadata", {})
        if "task" not in source:
            raise UserError(f"expert {directory} names no training task to hold examples out of")
        if source.get("split", "train") == split:
            raise UserError(f"expert {directory} was trained on {source['task']} split {split!r}:"
                            " choose another --heldout_split")
        tasks.setdefault(source["task"], source.get("split", "train"))
    return HeldoutScore(backbone.config, {
        task: _heldout(task, trained_split, split, cfg, examples_per_task)
        for task, trained_split in tasks.items()}, split)


def _heldout(task: str, trained_split: str, split: str, cfg: dict, limit: int
             ) -> tuple[list[evaluate.EvalExample], Any]:
    """The first `limit` labeled examples of a task's `split` whose raw example is not in its
    `trained_split`, and the vocabulary."""
    examples, vocabulary = evaluate.load_examples(
        task, split, max_input_length=cfg["max_input_length"],
        max_target_length=cfg["max_target_length"])
    seen = {corpus.raw_example_id(e.example_id)
            for e in examples_of(task, trained_split, cfg, None)}
    kept = [e for e in examples
            if e.label is not None and corpus.raw_example_id(e.example_id) not in seen][:limit]
    if not kept:
        raise UserError(f"task {task!r} has no labeled {split} examples unseen in its "
                        f"{trained_split} split to choose λ on")
    return kept, vocabulary


def _train(args: argparse.Namespace, cfg: dict) -> dict | list[dict]:
    if args.per_template and (args.template or args.name):
        raise UserError("--per_template names each expert after its template: drop --template "
                        "and --name")
    if args.per_template:
        return train_jobs(load_backbone(args.backbone),
                          template_jobs(args.task, args.split, args.out, cfg), cfg, args.full)
    name = args.name or ":".join([args.task, args.split] + ([args.template] if args.template
                                                            else []))
    return (trained(args.out, name)
            or train(load_backbone(args.backbone), args.task, args.split, args.out, name, cfg,
                     args.template, args.full))


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
    kinds = {checkpoint.kind_of(checkpoint.read_manifest(d)) for d in args.experts}
    if args.task_vectors and kinds - {checkpoint.FULL}:
        raise UserError("--task_vectors merges full fine-tune experts (train them with "
                        "--full); adapter experts are averaged without it")
    backbone = load_backbone(args.backbone)
    grid = _floats(args.lambda_grid, "--lambda_grid") if args.lambda_grid else None
    # Held-out examples are read only for a grid over full experts (`merge` refuses the rest).
    score = (heldout_score(backbone, args.experts, cfg, args.heldout_examples,
                           args.heldout_split) if grid and kinds == {checkpoint.FULL} else None)
    return merge(backbone, args.experts, args.out, args.name or MERGED, grid, score)


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes numbers separated by commas, got {text!r}") from None
    return values


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
    sub.add_argument("--out", required=True,
                     help="the expert's directory (--per_template: their parent)")
    sub.add_argument("--name", help="the expert's id (default TASK:SPLIT[:TEMPLATE])")
    sub.add_argument("--template", help="a prompt expert: this template's examples only")
    sub.add_argument("--per_template", action="store_true",
                     help="one prompt expert per template of the split, OUT/<template-slug>/")
    sub.add_argument("--full", action="store_true",
                     help="a full fine-tune expert (every parameter trained, all saved)")
    sub = add("library", "index experts' training instances (in the order given)", _library)
    sub.add_argument("--experts", nargs="*", default=[], help="expert directories")
    sub.add_argument("--out", required=True, help="the library's directory")
    sub = add("retrieve", "Retrieval-of-Experts for a target task", _retrieve)
    sub.add_argument("--library", required=True)
    sub.add_argument("--task", required=True)
    sub.add_argument("--split", default="validation")
    sub = add("merge", "average adapter experts, or merge full fine-tunes' task vectors",
              _merge)
    sub.add_argument("--backbone", required=True)
    sub.add_argument("--experts", nargs="*", default=[])
    sub.add_argument("--out", required=True)
    sub.add_argument("--name", help=f"the merged expert's id (default {MERGED!r})")
    sub.add_argument("--task_vectors", action="store_true",
                     help="θ_pre + Σ λ_i τ_i of full fine-tune experts (λ_i = 1/N by default)")
    sub.add_argument("--lambda_grid", help="comma-separated λs; the one shared λ with the best "
                     "held-out accuracy on the merged experts' own tasks wins")
    sub.add_argument("--heldout_examples", type=int, default=100,
                     help="held-out examples per merged task that choose λ")
    sub.add_argument("--heldout_split", default="validation")
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
