"""Zero-shot table of upstream models (issue 21): rank-classification accuracy and SoftEM of
greedy decodes on the paper's Table-1 targets (test), its BIG-bench targets (test) and held-out
`validation` examples of upstream datasets (in-distribution), beside each set's majority-class
rate.

    python scripts/zero_shot.py run --name bert2bert --model_dir RUN --out OUT \\
        --gin.tasks.vocab.vocabulary_path.path=\\"minilm\\"
    python scripts/zero_shot.py run --name t5_mini --model_dir RUN2 --out OUT \\
        --gin.tasks.vocab.vocabulary_path.path=\\"RUN2/spm_8000.model\\"
    python scripts/zero_shot.py table --out OUT > table.md

`run` evaluates one model (one process per model: the tasks' vocabulary is resolved once per
process, so bind the one the model was trained with) and writes `OUT/<name>/<task>.json` per
task, skipping tasks already written (it resumes). Validation examples that share a raw example
with the dataset's train split are left out (`corpus.held_out_examples`). `table` prints the
Markdown table of every model in OUT. Majority class: the share of the most frequent gold
position among the answer choices, over the examples whose gold is one of them.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Sequence

import numpy as np

from recross_jax import (
    checkpoints,
    corpus,
    evaluate,
    gin_utils,
    inference,
    io_utils,
    models,
    partitioning,
    task_modules,
)
from recross_jax.errors import UserError

TABLE1 = ("ai2_arc_ARC_Challenge", "anli_r3", "hellaswag", "openbookqa_main", "piqa", "squad_v2",
          "super_glue_cb", "super_glue_wic", "super_glue_wsc_fixed", "winogrande_winogrande_xl")
BIGBENCH = ("hindu_knowledge", "known_unknowns", "logic_grid_puzzle",
            "movie_dialog_same_or_different", "strategyqa")
UPSTREAM = ("ag_news", "amazon_polarity", "dbpedia_14", "glue_qqp", "wiki_qa")
SETS = {"Table-1 targets (test)": ("test", TABLE1),
        "BIG-bench targets (test)": ("test", BIGBENCH),
        "upstream datasets (held-out validation)": ("validation", UPSTREAM)}
# The ReCross paper's Table 1, mean SoftEM over its 10 targets.
PUBLISHED = {"BART0": 40.38, "T0-3B": 41.33}


def evaluation_examples(task: str, split: str, max_examples: int, max_input_length: int
                        ) -> tuple[list[evaluate.EvalExample], object]:
    """The first `max_examples` examples of the split (validation: those unseen in training)."""
    examples, vocabulary = evaluate.load_examples(task, split, max_input_length=max_input_length,
                                                  max_target_length=evaluate.MAX_DECODE_LENGTH)
    if split == "validation":
        unseen = {row["example_id"] for row in corpus.held_out_examples(task)}
        examples = [e for e in examples if e.example_id in unseen]
    return examples[:max_examples], vocabulary


def run(args: argparse.Namespace) -> None:
    task_modules.import_task_modules(None)
    gin_utils.parse_gin_flags(args)
    config = checkpoints.read_model_config(args.model_dir)
    mesh = partitioning.create_mesh(1)
    step = args.step
    if step is None:
        manager = checkpoints.CheckpointManager(args.model_dir, read_only=True)
        step = manager.latest_step()
        manager.close()
    _, params = checkpoints.restore_model(
        args.model_dir, step, shardings=inference.param_shardings(models.build(config), mesh))
    for split, names in SETS.values():
        for name in names:
            if args.tasks and name not in args.tasks:
                continue
            path = os.path.join(args.out, args.name, f"recross.{name}.json")
            if os.path.exists(path):
                continue
            examples, vocabulary = evaluation_examples(f"recross.{name}", split, args.max_examples,
                                                       args.max_input_length)
            results, _, _ = evaluate.evaluate_params(
                config, params, examples, vocabulary, mesh=mesh, batch_size=args.batch_size,
                desc=f"{args.name} {name}:{split}")
            results.update(task=f"recross.{name}", split=split, model_dir=args.model_dir,
                           step=step, majority=evaluate.majority_rate(examples),
                           max_input_length=args.max_input_length)
            io_utils.write_json_atomic(path, results)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def table(out: str) -> str:
    """The Markdown table of every model evaluated into `out`."""
    if not os.path.isdir(out):
        raise UserError(f"no zero-shot results in {out}")
    names = sorted(n for n in os.listdir(out) if os.path.isdir(os.path.join(out, n)))
    head = ["dataset", "n", "majority"] + [f"acc {n}" for n in names] + [f"SoftEM {n}" for n in names]
    lines = []
    for title, (_, tasks) in SETS.items():
        lines += ["", f"**{title}**", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
        rows = collections.defaultdict(list)
        for task in tasks:
            found = {n: os.path.join(out, n, f"recross.{task}.json") for n in names}
            results = {n: io_utils.read_json_object(p) for n, p in found.items() if os.path.exists(p)}
            if not results:
                continue
            first = next(iter(results.values()))
            cells = ([first.get("majority")] + [results.get(n, {}).get("accuracy") for n in names]
                     + [results.get(n, {}).get("soft_em") for n in names])
            for i, value in enumerate(cells):
                rows[i].append(value)
            lines.append(f"| {task} | {first['num_examples']} | "
                         + " | ".join(_cell(v) for v in cells) + " |")
        if not rows:
            lines.append("| (not evaluated) |" + " |" * (len(head) - 1))
            continue
        # Means over the datasets that have the figure (accuracy: those with answer choices).
        means = [None if not any(v is not None for v in rows[i])
                 else float(np.mean([v for v in rows[i] if v is not None])) for i in range(len(rows))]
        lines.append("| **mean** | | " + " | ".join(f"**{_cell(v)}**" if v is not None else ""
                                                  for v in means) + " |")
    published = ", ".join(f"{k} {v:.2f}" for k, v in PUBLISHED.items())
    lines += ["", f"Published mean SoftEM on the Table-1 targets (ReCross paper, Table 1): {published}."]
    return "\n".join(lines[1:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="evaluate one model on every set")
    run_parser.add_argument("--name", required=True, help="the model's column name")
    run_parser.add_argument("--model_dir", required=True)
    run_parser.add_argument("--out", required=True)
    run_parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    run_parser.add_argument("--tasks", nargs="+", default=None,
                            help="only these datasets of the sets (e.g. ag_news piqa)")
    run_parser.add_argument("--max_examples", type=int, default=300)
    run_parser.add_argument("--max_input_length", type=int, default=256)
    run_parser.add_argument("--batch_size", type=int, default=32)
    gin_utils.add_gin_flags(run_parser)
    table_parser = sub.add_parser("table", help="print the Markdown table of OUT")
    table_parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.action == "run":
        run(args)
    else:
        print(table(args.out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"zero_shot: error: {error}", file=sys.stderr)
        sys.exit(2)
