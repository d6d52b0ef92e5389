"""`recross taskshop score | evaluate | select | transfer | multitask`: TaskShop (Kim et al., 2023)
from the command line.

- `score`: F(s→t) for TaskWeb's tasks from a few prompted examples of each (Retrieval-of-Experts
  with all-MiniLM-L6-v2, or an upstream model's own embeddings), written as a score file
  `{"estimator": ..., "scores": {target: {source: F}}}`.
- `evaluate`: Table 2 of the paper (NDCG and Regret@5 per category, and the mean over all
  evaluated targets with Regret@1/3/5), leave-one-out over TaskWeb's targets against the
  T5-large fine-tuning transfer: the authors' RoE scores and TaskShop on them, and each
  `--scores NAME=FILE` with TaskShop on it; the λ curve on the held-out target; with `--out`,
  tables (markdown, CSV), per-target JSON and a heatmap of the transfer matrix beside
  TaskShop's estimates.
- `select`: the best source tasks for a target, a TaskWeb task or a new one given as a JSONL
  file of a few examples.
- `transfer`: measure the pairwise transfer s → t by fine-tuning the upstream model
  (`transfer_runner`; resumable), write it in TaskWeb's transfer format and compare it with
  TaskWeb's by Spearman's ρ.
- `multitask`: TaskWeb's Table 3: fine-tune the backbone on a mixture of the top-k sources by
  TaskShop, TaskWeb's own top k, random k, the bottom k or all sources, and score it zero-shot
  on each target (`multitask`; resumable).

Settings not given as flags come from gin (`taskshop_cli.settings`, see gin/runs/taskshop.gin;
`transfer_runner.TransferConfig`, see gin/runs/transfer.gin; `multitask.MultitaskConfig`, see
gin/runs/multitask.gin). Bad input (an unknown task, too
few examples, a malformed score file) ends with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from typing import Mapping, Sequence

import gin
import numpy as np

from recross_jax import gin_utils
from recross_jax.errors import UserError
from recross_jax.selection import estimators, ranking, taskshop, taskweb

AUTHORS = "authors"
ESTIMATORS = ("roe", "model")


@gin.configurable
def settings(lam: float = taskweb.DEFAULT_LAMBDA, setup: str = taskweb.DEFAULT_SETUP,
             ks: Sequence[int] = ranking.DEFAULT_KS, n_source: int | None = 100,
             n_target: int | None = 32, seed: int = 0, min_examples: int = 4,
             lambdas: Sequence[float] = tuple(i / 10 for i in range(11)),
             lambda_criterion: str = "regret@5", heldout: str = taskweb.HELDOUT_TARGET,
             max_length: int = 512, batch_size: int = 64) -> dict:
    """TaskShop's settings (gin-configurable; flags override).

    Args:
      lam: λ, the weight of TaskShop's pivot term (the paper's 0.7).
      setup: the TaskWeb setup whose transfer is T and the gold ('finetune/t5l').
      ks: the k of Regret@k.
      n_source, n_target: examples per source / target task for F (None: all the task's
        prompt samples); SPEC §2: 100 and 32.
      seed: seed of the example samples.
      min_examples: fewer target examples than this is an error.
      lambdas: the λ grid of the tuning curve.
      lambda_criterion: how the held-out target picks λ ('regret@5' or 'ndcg').
      heldout: the target λ is tuned on (the authors held out piqa).
      max_length, batch_size: of the MiniLM / model encoder (512 tokens: what the authors'
        Hugging Face tokenizer truncated to; sentence-transformers would use 256).
    """
    return dict(lam=lam, setup=setup, ks=tuple(ks), n_source=n_source, n_target=n_target, seed=seed,
                min_examples=min_examples, lambdas=tuple(lambdas), lambda_criterion=lambda_criterion,
                heldout=heldout, max_length=max_length, batch_size=batch_size)


# ----------------------------------------------------------------------------- score files


def read_scores(path: str) -> dict[str, dict[str, float]]:
    """`{target: {source: score}}` from a score file (that object itself, or under "scores").

    Raises:
      UserError: a missing file, invalid JSON, or anything but finite numbers per (target, source).
    """
    if not os.path.isfile(path):
        raise UserError(f"score file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"malformed score file {path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("scores"), dict):
        data = data["scores"]
    if not isinstance(data, dict) or not data:
        raise UserError(f"malformed score file {path}: expected {{target: {{source: score}}}}")
    out = {}
    for target, row in data.items():
        if not isinstance(row, dict):
            raise UserError(f"malformed score file {path}: the scores of target {target!r} are "
                            "not an object {source: score}")
        for source, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"malformed score file {path}: score {source!r} -> {target!r} is "
                                f"not a finite number ({value!r})")
        out[target] = {source: float(value) for source, value in row.items()}
    return out


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


# ----------------------------------------------------------------------------- estimators


def make_estimator(name: str, cfg: dict, model_dir: str | None = None) -> estimators.EmbeddingEstimator:
    if name == "roe":
        return estimators.minilm_roe(cfg["max_length"], cfg["batch_size"])
    if name == "model":
        if not model_dir:
            raise UserError("estimator 'model' needs the upstream model directory (--model_dir)")
        return estimators.model_embedding_from_dir(model_dir, batch_size=cfg["batch_size"])
    raise UserError(f"unknown estimator {name!r} (choose from {', '.join(ESTIMATORS)})")


def score_taskweb(estimator: estimators.EmbeddingEstimator, targets: Sequence[str], cfg: dict,
                  examples_dir: str | None = None) -> dict[str, dict[str, float]]:
    """F(s→t) for each target over TaskWeb's 22 source tasks, from sampled examples."""
    for target in targets:
        taskweb.check_task(target)
    sources = estimators.taskweb_sample(taskweb.TASKS, cfg["n_source"], cfg["seed"], examples_dir)
    target_examples = estimators.taskweb_sample(targets, cfg["n_target"], cfg["seed"], examples_dir)
    for target, examples in target_examples.items():
        estimators.check_examples(target, examples, cfg["min_examples"])
    return estimator.table(target_examples, sources)


# ----------------------------------------------------------------------------- evaluation


def evaluate_rows(tables: Mapping[str, Mapping[str, Mapping[str, float]]], cfg: dict,
                  tune_lambda: bool = False) -> dict:
    """For each F table: the λ curve on the held-out target, Table 2 of F alone and of
    TaskShop(F) (λ from settings, or tuned on the held-out target)."""
    gold = taskweb.transfer(cfg["setup"])
    targets = list(taskweb.EVAL_TARGETS)
    rows, curves, lambdas, estimates = {}, {}, {}, {}
    for name, f in tables.items():
        missing = [t for t in targets + [cfg["heldout"]] if t not in f]
        if missing:
            raise UserError(f"scores {name!r} lack target(s) {', '.join(missing)}")
        curve = taskshop.lambda_curve(f, cfg["lambdas"], cfg["heldout"], cfg["setup"], cfg["ks"])
        lam = taskshop.best_lambda(curve, cfg["lambda_criterion"]) if tune_lambda else cfg["lam"]
        curves[name], lambdas[name] = curve, lam
        ts = taskshop.taskshop_table(f, gold, targets=targets + [cfg["heldout"]], lam=lam)
        estimates[name] = ts
        rows[_f_row(name)] = taskshop.evaluate_taskweb(f, cfg["setup"], ks=cfg["ks"])
        rows[_ts_row(name)] = taskshop.evaluate_taskweb(ts, cfg["setup"], ks=cfg["ks"])
    return {"rows": rows, "lambda_curves": curves, "lambdas": lambdas, "estimates": estimates}


def _f_row(name: str) -> str:
    return "RoE (authors' scores)" if name == AUTHORS else name


def _ts_row(name: str) -> str:
    return "TaskShop (authors' RoE)" if name == AUTHORS else f"TaskShop ({name})"


def table_markdown(rows: Mapping[str, dict], ks: Sequence[int], scale: float = 100.0) -> str:
    """Table 2's layout: per category 'NDCG / Regret@5', then the mean over all targets."""
    main_k = 5 if 5 in ks else ks[-1]
    categories = list(next(iter(rows.values()))["per_category"]) if rows else []
    n_all = next(iter(rows.values()))["mean"]["n"] if rows else 0
    header = (["Method"] + [f"{c} (NDCG / Regret@{main_k})" for c in categories]
              + [f"All {n_all} (NDCG / Regret@{main_k})"] + [f"Regret@{k}" for k in ks if k != main_k])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method, result in rows.items():
        cells = [f"{scale * result['per_category'][c]['ndcg']:.2f} / "
                 f"{scale * result['per_category'][c][f'regret@{main_k}']:.2f}" for c in categories]
        mean = result["mean"]
        cells.append(f"{scale * mean['ndcg']:.2f} / {scale * mean[f'regret@{main_k}']:.2f}")
        cells += [f"{scale * result['mean'][f'regret@{k}']:.2f}" for k in ks if k != main_k]
        lines.append("| " + " | ".join([method] + cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: Mapping[str, dict], ks: Sequence[int]) -> str:
    """One line per (method, category or 'all'): n, ndcg, regret@k (fractions, unrounded)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "category", "n", "ndcg"] + [f"regret@{k}" for k in ks])
    for method, result in rows.items():
        for category, row in list(result["per_category"].items()) + [("all", result["mean"])]:
            writer.writerow([method, category, row["n"], repr(row["ndcg"])]
                            + [repr(row[f"regret@{k}"]) for k in ks])
    return out.getvalue()


def lambda_markdown(curves: Mapping[str, Sequence[dict]], heldout: str, lambdas: Mapping[str, float],
                    scale: float = 100.0) -> str:
    lines = []
    for name, curve in curves.items():
        lines.append(f"λ curve of {_ts_row(name)} (held-out target {heldout}; λ used: {lambdas[name]:g})\n")
        lines.append(f"| λ | {heldout} NDCG | {heldout} Regret@5 | Table-2 mean NDCG | "
                     "Table-2 mean Regret@5 |")
        lines.append("|---:|---:|---:|---:|---:|")
        for row in curve:
            lines.append(f"| {row['lambda']:.2f} | {scale * row['heldout_ndcg']:.2f} | "
                         f"{scale * row['heldout_regret@5']:.2f} | {scale * row['table2_ndcg']:.2f} | "
                         f"{scale * row['table2_regret@5']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_heatmaps(gold: Mapping[str, Mapping[str, float]],
                  panels: Mapping[str, Mapping[str, Mapping[str, float]]], path: str,
                  gold_title: str) -> None:
    """PNG: the measured transfer matrix (TaskWeb's Figure 3, left) and, beside it, each
    estimate; rows are targets, columns sources, the diagonal blank."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    from recross_jax.io_utils import atomic_path  # pylint: disable=import-outside-toplevel
    targets = [t for t in taskweb.TASKS if t in gold]
    sources = list(taskweb.TASKS)
    all_panels = {gold_title: gold, **panels}
    fig, axes = plt.subplots(1, len(all_panels), squeeze=False,
                             figsize=(7.5 * len(all_panels), 7.5))
    for ax, (title, table) in zip(axes[0], all_panels.items()):
        grid = np.full((len(targets), len(sources)), np.nan)
        for i, t in enumerate(targets):
            for j, s in enumerate(sources):
                if s != t and s in table.get(t, {}):
                    grid[i, j] = table[t][s]
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        diverging = table is gold
        image = ax.imshow(grid, cmap="RdBu" if diverging else "viridis",
                          vmin=-bound if diverging else np.nanmin(grid),
                          vmax=bound if diverging else np.nanmax(grid))
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(sources)), sources, rotation=90, fontsize=7)
        ax.set_yticks(range(len(targets)), targets, fontsize=7)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- commands


def _config(args: argparse.Namespace) -> dict:
    cfg = settings()
    for name in ("lam", "setup", "n_source", "n_target", "seed", "min_examples"):
        value = getattr(args, name, None)
        if value is not None:
            cfg[name] = value
    if getattr(args, "k", None):
        cfg["ks"] = tuple(args.k)
    for name in ("n_source", "n_target"):
        if cfg[name] == 0:  # the flags' "all"
            cfg[name] = None
        if cfg[name] is not None and (isinstance(cfg[name], bool) or not isinstance(cfg[name], int)
                                      or cfg[name] < 1):
            raise UserError(f"{name} must be a positive number of examples (0 or None: all), "
                            f"got {cfg[name]!r}")
    if isinstance(cfg["min_examples"], bool) or not isinstance(cfg["min_examples"], int):
        raise UserError(f"min_examples must be an integer, got {cfg['min_examples']!r}")
    taskshop.check_lambda(cfg["lam"])
    if cfg["setup"] not in taskweb.setups():
        raise UserError(f"unknown TaskWeb setup {cfg['setup']!r} (known: {', '.join(taskweb.setups())})")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in cfg["ks"]):
        raise UserError(f"the k of Regret@k must be positive integers, got {cfg['ks']}")
    taskweb.check_task(cfg["heldout"], taskweb.TASKS)
    return cfg


def _score(args: argparse.Namespace) -> int:
    cfg = _config(args)
    targets = args.targets.split(",") if args.targets else list(taskweb.EXAMPLE_TASKS)
    for target in targets:
        taskweb.check_task(target)
    estimator = make_estimator(args.estimator, cfg, args.model_dir)
    table = score_taskweb(estimator, targets, cfg, args.examples_dir)
    rho, n = ranking.spearman(taskweb.roe(), table)
    write_json(args.out, {"estimator": args.estimator, "n_source": cfg["n_source"],
                          "n_target": cfg["n_target"], "seed": cfg["seed"],
                          "model_dir": args.model_dir, "scores": table})
    print(f"wrote F({args.estimator}) for {len(table)} target(s) to {args.out}; Spearman rho with "
          f"the authors' RoE: {rho:.4f} over {n} pairs")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    tables = {} if args.no_authors else {AUTHORS: taskweb.roe()}
    for item in args.scores or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--scores takes NAME=FILE, got {item!r}")
        if name in tables:
            raise UserError(f"two score tables named {name!r}")
        tables[name] = read_scores(path)
    if not tables:
        raise UserError("nothing to evaluate: give --scores NAME=FILE or drop --no_authors")
    result = evaluate_rows(tables, cfg, args.tune_lambda)
    markdown = table_markdown(result["rows"], cfg["ks"])
    notes = [f"Gold: TaskWeb's {cfg['setup']} transfer; TaskShop λ = "
             + ", ".join(f"{result['lambdas'][n]:g} ({_ts_row(n)})" for n in tables)]
    for name, table in tables.items():
        if name != AUTHORS:
            rho, n = ranking.spearman(taskweb.roe(), table)
            per_target, n_targets = ranking.spearman_per_target(taskweb.roe(), table)
            notes.append(f"Spearman ρ of {name} with the authors' RoE: {rho:.4f} over {n} pairs "
                         f"(per target: {per_target:.4f}, mean of {n_targets})")
    curves = lambda_markdown(result["lambda_curves"], cfg["heldout"], result["lambdas"])
    print(table_csv(result["rows"], cfg["ks"]) if args.format == "csv" else markdown, end="")
    if args.format != "csv":
        print("\n" + "\n".join(notes))
    if args.lambda_curve:
        print("\n" + curves)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
            f.write(markdown + "\n" + "\n".join(notes) + "\n")
        with open(os.path.join(args.out, "table.csv"), "w", encoding="utf-8") as f:
            f.write(table_csv(result["rows"], cfg["ks"]))
        with open(os.path.join(args.out, "lambda.md"), "w", encoding="utf-8") as f:
            f.write(curves)
        write_json(os.path.join(args.out, "results.json"),
                   {"settings": {k: v for k, v in cfg.items()}, "rows": result["rows"],
                    "lambda_curves": result["lambda_curves"], "lambdas": result["lambdas"]})
        panels = {f"{_ts_row(n)}, λ = {result['lambdas'][n]:g}": est
                  for n, est in result["estimates"].items()}
        plot_heatmaps(taskweb.transfer(cfg["setup"]), panels, os.path.join(args.out, "heatmap.png"),
                      f"TaskWeb transfer T(s→t), {cfg['setup']}")
        print(f"\nwrote table.md, table.csv, lambda.md, results.json, heatmap.png to {args.out}",
              file=sys.stderr)
    return 0


def _select(args: argparse.Namespace) -> int:
    cfg = _config(args)
    gold = taskweb.transfer(cfg["setup"])
    if bool(args.target) == bool(args.examples):
        raise UserError("give one of --target TASK (a TaskWeb task) or --examples FILE.jsonl")
    if args.target:
        target = taskweb.check_task(args.target)
        if args.estimator == AUTHORS:
            f_table = taskweb.roe()
        elif args.scores:
            f_table = read_scores(args.scores)
        else:
            f_table = score_taskweb(make_estimator(args.estimator, cfg, args.model_dir), [target], cfg,
                                    args.examples_dir)
        if target not in f_table:
            raise UserError(f"the scores hold no target {target!r}")
        f_target = f_table[target]
    else:
        target = os.path.splitext(os.path.basename(args.examples))[0]
        if args.estimator == AUTHORS:
            raise UserError("the authors' scores cover TaskWeb's tasks only: a new target needs "
                            "--estimator roe or model")
        examples = estimators.sample(estimators.read_examples(args.examples), cfg["n_target"],
                                     cfg["seed"], target)
        estimators.check_examples(target, examples, cfg["min_examples"])
        estimator = make_estimator(args.estimator, cfg, args.model_dir)
        sources = estimators.taskweb_sample(taskweb.TASKS, cfg["n_source"], cfg["seed"], args.examples_dir)
        f_target = estimator(examples, sources, target=target)
    held_out = {p: row for p, row in gold.items() if p != target}
    scores = taskshop.taskshop_scores(f_target, held_out, target, lam=cfg["lam"])
    order = ranking.rank(scores, [s for s in taskweb.TASKS if s in scores])
    top = order[:args.top]
    if args.format == "json":
        print(json.dumps([{"source": s, "taskshop": scores[s], "f": f_target[s],
                           "transfer": gold.get(target, {}).get(s)} for s in top], indent=1))
        return 0
    measured = target in gold
    print(f"| rank | source | TaskShop | F{' | measured T' if measured else ''} |")
    print("|---:|---|---:|---:|" + ("---:|" if measured else ""))
    for i, source in enumerate(top, 1):
        extra = f" | {gold[target][source]:.4f}" if measured else ""
        print(f"| {i} | {source} | {scores[source]:.4f} | {f_target[source]:.4f}{extra} |")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from recross_jax.selection import transfer_runner  # pylint: disable=import-outside-toplevel
    if args.setup not in taskweb.setups():
        raise UserError(f"unknown TaskWeb setup {args.setup!r} (known: {', '.join(taskweb.setups())})")
    records = transfer_runner.run(_task_list(args.sources), _task_list(args.targets), args.model_dir,
                                  args.out, transfer_runner.TransferConfig(),
                                  progress=not args.no_progress, on_start=gin_utils.write_config)
    published = taskweb.transfer(args.setup)
    print("| target | source | PC | PM | T | TaskWeb T |")
    print("|---|---|---:|---:|---:|---:|")
    for record in records:
        target, source = record["target"], record["source"]
        theirs = published.get(target, {}).get(source)
        print(f"| {target} | {source} | {record['pc_mean']:.4f} | {record['pm_mean']:.2f} | "
              f"{taskweb.combine(record['pc_mean'], record['pm_mean']):.4f} | "
              f"{'' if theirs is None else f'{theirs:.4f}'} |")
    rho, n = transfer_runner.compare_with_taskweb(records, args.setup)
    print(f"\nSpearman rho of T with TaskWeb's ({args.setup}): {rho:.4f} over {n} pairs; wrote "
          f"{transfer_runner.SCORES_FILE} and {transfer_runner.TABLE_FILE} to {args.out}")
    return 0


def _multitask(args: argparse.Namespace) -> int:
    from recross_jax.selection import multitask  # pylint: disable=import-outside-toplevel
    cfg = multitask.MultitaskConfig()
    results = multitask.run(_task_list(args.targets), args.model_dir, args.out, cfg,
                            progress=not args.no_progress, on_start=gin_utils.write_config)
    print(multitask.table_markdown(results, cfg), end="")
    print(f"\nwrote {multitask.RESULTS_FILE} and {multitask.TABLE_FILE} to {args.out}", file=sys.stderr)
    return 0


def _task_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recross taskshop", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        gin_utils.add_gin_flags(sub)
        sub.add_argument("--lambda", dest="lam", type=float, default=None,
                         help="TaskShop's λ (default: gin, 0.7)")
        sub.add_argument("--setup", default=None, help="TaskWeb setup of T and the gold "
                         "(default finetune/t5l; 'mean' averages the seven)")
        sub.add_argument("--seed", type=int, default=None, help="seed of the example samples")
        sub.add_argument("--n_source", type=int, default=None, help="examples per source task (100; 0: all)")
        sub.add_argument("--n_target", type=int, default=None, help="examples of the target (32; 0: all)")
        sub.add_argument("--min_examples", type=int, default=None, help="fewest target examples (4)")
        sub.set_defaults(handler=handler)
        return sub

    sub = add("score", "F(s→t) for TaskWeb's tasks from a few examples each, to a score file", _score)
    sub.add_argument("--estimator", default="roe", help="roe (all-MiniLM-L6-v2) or model")
    sub.add_argument("--model_dir", default=None, help="upstream model directory (estimator model)")
    sub.add_argument("--targets", default=None, help="comma-separated targets (default: all 23 tasks)")
    sub.add_argument("--examples_dir", default=None, help="TaskWeb tasks/ directory "
                     "(default: tasks.jsonl.taskweb_dir, ../shared/data/taskweb/tasks)")
    sub.add_argument("--out", required=True, help="the score file to write (JSON)")

    sub = add("evaluate", "Table 2: NDCG and Regret@k of F and TaskShop(F), leave-one-out", _evaluate)
    sub.add_argument("--scores", action="append", default=None, metavar="NAME=FILE",
                     help="a score file of your own F (repeatable), evaluated with TaskShop on it")
    sub.add_argument("--no_authors", action="store_true", help="leave out the authors' RoE rows")
    sub.add_argument("--tune_lambda", action="store_true",
                     help="pick λ on the held-out target (piqa) instead of the fixed one")
    sub.add_argument("--lambda_curve", action="store_true", help="also print the λ curves")
    sub.add_argument("-k", type=int, action="append", default=None,
                     help="k of Regret@k (repeatable; default 1, 3, 5)")
    sub.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    sub.add_argument("--out", default=None, help="directory for tables, results.json, heatmap.png")

    sub = add("select", "rank the source tasks for a target with TaskShop", _select)
    sub.add_argument("--target", default=None, help="a TaskWeb task")
    sub.add_argument("--examples", default=None, help="JSONL of a new target's examples "
                     "('inputs', optional 'choices')")
    sub.add_argument("--estimator", default=None,
                     help="authors (their RoE; TaskWeb targets only), roe or model "
                          "(default: authors for --target, roe for --examples)")
    sub.add_argument("--scores", default=None, help="a score file holding F(·→target)")
    sub.add_argument("--model_dir", default=None, help="upstream model directory (estimator model)")
    sub.add_argument("--examples_dir", default=None, help="TaskWeb tasks/ directory")
    sub.add_argument("--top", type=int, default=5, help="how many sources to list (5)")
    sub.add_argument("--format", choices=("markdown", "json"), default="markdown")

    help_text = ("measure transfer s → t by fine-tuning (resumable), compare with TaskWeb's "
                 "(gin/runs/transfer.gin)")
    sub = commands.add_parser("transfer", help=help_text, description=help_text)
    gin_utils.add_gin_flags(sub)
    sub.add_argument("--model_dir", required=True, help="the upstream model directory")
    sub.add_argument("--sources", required=True, help="comma-separated source tasks: TaskWeb "
                     "names held by the ReCross release (cb, rte, ...) or registered tasks")
    sub.add_argument("--targets", required=True, help="comma-separated target tasks (as --sources)")
    sub.add_argument("--out", required=True, help="the run directory (an existing one resumes)")
    sub.add_argument("--setup", default=taskweb.DEFAULT_SETUP,
                     help="the TaskWeb setup compared with (default finetune/t5l)")
    sub.add_argument("--tasks_module", action="append", default=None,
                     help="module registering tasks (repeatable; default: the project's)")
    sub.add_argument("--no_progress", action="store_true", help="no progress bar")
    sub.set_defaults(handler=_transfer)

    help_text = ("multi-task selection (Table 3): fine-tune on the sources each condition picks, "
                 "score zero-shot on the targets (resumable; gin/runs/multitask.gin)")
    sub = commands.add_parser("multitask", help=help_text, description=help_text)
    gin_utils.add_gin_flags(sub)
    sub.add_argument("--model_dir", required=True, help="the backbone to fine-tune")
    sub.add_argument("--targets", required=True, help="comma-separated TaskWeb targets (cb, rte, ...)")
    sub.add_argument("--out", required=True, help="the run directory (an existing one resumes)")
    sub.add_argument("--tasks_module", action="append", default=None,
                     help="module registering tasks (repeatable; default: the project's)")
    sub.add_argument("--no_progress", action="store_true", help="no progress bar")
    sub.set_defaults(handler=_multitask)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`recross taskshop ACTION ...`; UserErrors propagate to the `recross` entry point."""
    args = build_parser().parse_args(argv)
    if args.action in ("score", "select"):
        # Their configurables (the TaskWeb directory, the vocabulary) exist before gin parses.
        import tasks.jsonl  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        import tasks.vocab  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    if args.action in ("transfer", "multitask"):
        # The configs are configurable once their modules are imported; the tasks are registered.
        from recross_jax import task_modules  # pylint: disable=import-outside-toplevel
        from recross_jax.selection import multitask, transfer_runner  # noqa: F401  pylint: disable=W0611,C0415
        task_modules.import_task_modules(args.tasks_module)
    gin_utils.parse_gin_flags(args)
    if args.action == "select":
        if args.estimator is None:
            args.estimator = "roe" if args.examples else (None if args.scores else AUTHORS)
        if args.estimator not in (None, AUTHORS, *ESTIMATORS):
            raise UserError(f"unknown estimator {args.estimator!r} (choose from authors, "
                            f"{', '.join(ESTIMATORS)})")
        if args.top < 1:
            raise UserError(f"--top must be positive, got {args.top}")
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"recross taskshop: error: {gin_utils.first_line(error)}", file=sys.stderr)
        sys.exit(2)
