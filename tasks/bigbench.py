"""BIG-bench JSON tasks as SeqIO tasks, read from a user's own BIG-bench checkout (SPEC §4).

An option, never a requirement: the project's corpus is the embedded ReCross release
(`tasks/recross.py`), and BIG-bench's JSON tasks cannot be had from a package registry any more.
Importing this module reads nothing, fetches nothing and registers nothing, unless a checkout is
given, in one of three ways:
  - `$RECROSS_BIGBENCH_DIR`: registered when the module is imported;
  - gin: `tasks.bigbench.register_checkout.tasks_dir = '/path'` (in a gin file after
    `import tasks.bigbench`, or `--gin.tasks.bigbench.register_checkout.tasks_dir=...`):
    registered when the gin config is finalized, as every `recross` command does after parsing;
  - Python: `register_checkout(path)`, or `register_bigbench(path, cap, prefix)`.
A checkout is a clone of google/BIG-bench or its `bigbench/benchmark_tasks` directory. Asking
for a `bigbench.*` task or mixture through this module with none given is a UserError saying what
to set.

Tasks. One task per JSON task directory of `benchmark_tasks`, named `bigbench.<task>`, or per
subtask directory, named `bigbench.<task>.<subtask>`. A task whose directory has subtask
directories is a container (its own task.json has no examples) and contributes only its
subtasks. Programmatic tasks (a `task.py` and no task.json) have no JSON examples to read and
are skipped.

Format (template `zero_shot`), following BIG-bench's JSON conventions:
  inputs = task_prefix + example_input_prefix + input [+ choices] + example_output_prefix
with BIG-bench's defaults ("\\nQ: ", "\\nA: "), surrounding whitespace stripped. An example is
multiple choice when it has `target_scores`, unless it also has a `target` and the task's
preferred score is not `multiple_choice_grade` (e.g. arithmetic: an exact-match task whose
scores are only distractors). Multiple-choice inputs always list their choices, one per line
after the task's `choice_prefix` (default "\\n  choice: "), even where the JSON sets
`append_choices_to_input` to false, so the choices are visible to retrieval and to the model; the
order is a seeded shuffle (JSON files often list the correct answer first). The target is the
best-scored choice (the first one on ties) and `answer_choices` are all choices in the listed
order. A generative example's target is its first `target`; `answer_choices` is empty.

Splits. Duplicate examples are dropped (as BIG-bench does); each remaining example goes to
train/validation/test by a sha256 of its task and content (`tasks.common.hashed_split`), so the
assignment is stable across runs and processes and duplicates cannot straddle splits. Within a
split, examples are ordered by another content hash: any prefix of a split is a uniform sample.
`example_id` is "task|split|zero_shot|#i" with i the example's position in task.json.

Mixtures. `bigbench_targets`: T0's 14 held-out BIG-bench targets (subtasks flattened).
`bigbench_upstream`: every other task, leaving out any task whose name contains a target's
name (e.g. `misconceptions_russian`). `bigbench_upstream_sample`: a fixed subset of 64 of those
(chosen by a hash of their names), for demos on one CPU. The per-task cap (default 1000, gin:
`tasks.bigbench.upstream_cap.cap`) is used twice: as the mixing rate min(train examples, cap),
for sampling through SeqIO, and as the number of examples per task that `pool()` yields when the
mixture is read as a finite pool (the first `cap` of each task's hash-ordered split). Upstream
tasks' train splits are capped at the source too (`examples`, `num_examples` and their SeqIO
datasets hold the first `cap` examples, a uniform sample), so upstream data D is the capped pool
and training on the mixture never reads a task's uncapped train split into memory.

Registration cost. Registering a checkout reads only its directory listing. Example counts
(`num_examples`, used by the mixing rates) come from a small index in the asset cache
(`$RECROSS_CACHE`), built once by reading every task.json; examples are read from JSON in Python
on demand, without tf.data.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping

import gin
import seqio

from recross_jax import assets, corpus
from recross_jax.errors import UserError
from recross_jax.io_utils import write_json_atomic
from tasks import common

TEMPLATE = "zero_shot"
PREFIX = "bigbench"
DEFAULT_CAP = 1000
# Upstream tasks in `<prefix>_upstream_sample`: a small, fixed subset for demos and quick
# studies on one CPU (the full upstream mixture reads 1.7 GB of JSON).
SAMPLE_SIZE = 64
# T0's held-out BIG-bench evaluation tasks (SPEC §4).
TARGETS = (
    "code_line_description", "conceptual_combinations", "formal_fallacies_syllogisms_negation",
    "hindu_knowledge", "known_unknowns", "language_identification", "logic_grid_puzzle",
    "logical_deduction", "misconceptions", "movie_dialog_same_or_different", "novel_concepts",
    "strategyqa", "vitaminc_fact_verification", "winowhy",
)
# BIG-bench's defaults for tasks that do not set their own prefixes.
INPUT_PREFIX = "\nQ: "
OUTPUT_PREFIX = "\nA: "
CHOICE_PREFIX = "\n  choice: "
_INDEX_VERSION = 1
# Where a user names their checkout.
ENV_VAR = "RECROSS_BIGBENCH_DIR"
GIN_PARAMETER = "tasks.bigbench.register_checkout.tasks_dir"
NO_CHECKOUT = (f"no BIG-bench checkout given: set ${ENV_VAR} or bind {GIN_PARAMETER} to a clone "
               "of google/BIG-bench (or its bigbench/benchmark_tasks directory)")


@dataclasses.dataclass(frozen=True)
class _TaskFile:
    tasks_dir: str
    relative: str  # e.g. "logical_deduction/three_objects/task.json"

    @property
    def path(self) -> str:
        return os.path.join(self.tasks_dir, self.relative)


# Registered SeqIO task name -> its task.json; mixture name -> its per-task cap, read on use
# (None: uncapped).
_TASK_FILES: dict[str, _TaskFile] = {}
_MIXTURE_CAPS: dict[str, Callable[[], int | None]] = {}
# Upstream task name -> the cap on its train split: upstream data D is capped at the source, so
# training through SeqIO never reads more of a task than the pool holds.
_UPSTREAM_CAPS: dict[str, Callable[[], int | None]] = {}


@gin.configurable
def upstream_cap(cap: int = DEFAULT_CAP) -> int:
    """The per-task cap of `bigbench_upstream`, read when the mixture is used so gin can bind it."""
    if cap < 1:
        raise UserError(f"tasks.bigbench.upstream_cap.cap must be positive, got {cap}")
    return cap


def format_example(raw: Mapping, task_json: Mapping, *, task: str, split: str, index: int,
                   seed: int = 0) -> dict:
    """Formats one BIG-bench JSON example as a zero-shot prompt in the schema of SPEC §0.

    Args:
      raw: the example from task.json (`input` and `target` and/or `target_scores`).
      task_json: the task's JSON object (prefixes, `preferred_score`).
      task: the registered task name.
      split: the example's split.
      index: the example's position in task.json.
      seed: seeds the order in which the choices are listed.
    """
    text = str(raw["input"])
    choices: list[str] = []
    if _is_multiple_choice(raw, task_json):
        scores = raw["target_scores"]
        target = max(scores, key=lambda choice: scores[choice])  # first of the best on ties
        choices = sorted(scores)
        random.Random(_digest(f"{seed}|{_canonical(raw)}")).shuffle(choices)
        choice_prefix = task_json.get("choice_prefix") or ""
        if not choice_prefix.strip():  # "" or " " would run the choices together
            choice_prefix = CHOICE_PREFIX
        text += "".join(choice_prefix + choice for choice in choices)
    else:
        targets = raw["target"] if isinstance(raw["target"], list) else [raw["target"]]
        target = str(targets[0])
    inputs = (str(task_json.get("task_prefix", ""))
              + task_json.get("example_input_prefix", INPUT_PREFIX) + text
              + task_json.get("example_output_prefix", OUTPUT_PREFIX))
    return common.make_example(
        inputs=inputs.strip(), targets=target, answer_choices=choices, task=task,
        template=TEMPLATE, example_id=common.example_id(task, split, TEMPLATE, index))


def examples(task_name: str, split: str) -> list[dict]:
    """The formatted examples of one registered BIG-bench task's split, in Python (no tf.data)."""
    if split not in common.SPLITS:
        raise UserError(f"unknown split {split!r} for {task_name} "
                        f"(splits: {', '.join(common.SPLITS)})")
    rows = _load(_task_file(task_name), task_name)[split][:_train_cap(task_name, split)]
    return [dict(row, answer_choices=list(row["answer_choices"])) for row in rows]


def num_examples(task_name: str, split: str) -> int:
    """The number of examples of a registered task's split, from the cached index."""
    task_file = _task_file(task_name)
    count = _index(task_file.tasks_dir)[task_file.relative][split]
    cap = _train_cap(task_name, split)
    return count if cap is None else min(count, cap)


def pool(mixture_name: str, split: str = "train") -> Iterator[dict]:
    """The examples of a BIG-bench mixture read as a finite pool: at most `cap` per task."""
    if mixture_name not in _MIXTURE_CAPS:
        if mixture_name.startswith(PREFIX + "_") and not _checkout_given():
            raise UserError(f"BIG-bench mixture {mixture_name!r}: {NO_CHECKOUT}")
        raise UserError(f"unknown BIG-bench mixture {mixture_name!r} "
                        f"(known: {', '.join(sorted(_MIXTURE_CAPS))})")
    cap = _MIXTURE_CAPS[mixture_name]()
    for task in seqio.MixtureRegistry.get(mixture_name).tasks:
        yield from examples(task.name, split)[:cap]


def _train_cap(task_name: str, split: str) -> int | None:
    """The cap on an upstream task's train split (None: uncapped)."""
    cap_fn = _UPSTREAM_CAPS.get(task_name)
    return cap_fn() if cap_fn is not None and split == "train" else None


def register_bigbench(tasks_dir: str, cap: int | None = None, prefix: str = PREFIX) -> list[str]:
    """Registers a task per JSON task/subtask under `tasks_dir`, and the mixtures.

    Args:
      tasks_dir: a BIG-bench checkout or its `bigbench/benchmark_tasks` directory.
      cap: the per-task cap of `<prefix>_upstream`; None reads `upstream_cap()` (gin) when
        the mixture is used.
      prefix: the namespace of the task names (`<prefix>.<task>`) and mixtures
        (`<prefix>_upstream`, `<prefix>_targets`); tests use their own to stay apart.

    Returns:
      The registered task names, sorted.
    """
    if cap is not None and cap < 1:
        raise UserError(f"BIG-bench per-task cap must be positive, got {cap}")
    tasks_dir = benchmark_tasks_dir(tasks_dir)
    # Re-registering a directory re-reads it: its files may have changed since.
    _index.cache_clear()
    _load.cache_clear()
    names, targets, upstream = [], [], []
    for relative in _task_files(tasks_dir):
        path = relative.split("/")[:-1]  # [task] or [task, subtask]
        name = ".".join([prefix, *path])
        _TASK_FILES[name] = _TaskFile(tasks_dir, relative)
        # Counts are served by `num_examples` (from the cached index), not through seqio.
        common.register_task(name, functools.partial(examples, name))
        names.append(name)
        if path[0] in TARGETS:
            targets.append(name)
        if not any(target in ".".join(path) for target in TARGETS):
            upstream.append(name)
    cap_fn = lambda: cap if cap is not None else upstream_cap()  # noqa: E731
    mixtures = {
        f"{prefix}_upstream": (upstream, cap_fn),
        f"{prefix}_upstream_sample": (_sample(upstream, SAMPLE_SIZE), cap_fn),
        f"{prefix}_targets": (targets, lambda: None),
    }
    upstream_cap_fn = mixtures[f"{prefix}_upstream"][1]
    for name in upstream:
        _UPSTREAM_CAPS[name] = upstream_cap_fn
    for mixture, (members, cap_fn) in mixtures.items():
        if members:
            common.register_mixture(mixture, members,
                                    rate=functools.partial(_capped_rate, cap_fn=cap_fn))
            _MIXTURE_CAPS[mixture] = cap_fn
    return names


@gin.configurable
def register_checkout(tasks_dir: str) -> list[str]:
    """Registers the `bigbench.*` tasks and mixtures of a user's BIG-bench checkout.

    Gin may bind `tasks_dir` (`GIN_PARAMETER`): the checkout is then registered when the config
    is finalized. Returns the registered task names.

    Raises:
      UserError: `tasks_dir` is not a directory, or holds no task.json files.
    """
    return _register_named(tasks_dir, GIN_PARAMETER)


def benchmark_tasks_dir(path: str) -> str:
    """The `benchmark_tasks` directory of a BIG-bench checkout, or `path` itself if it is one
    (a checkout has `bigbench/benchmark_tasks`; a tasks directory holds only task folders)."""
    path = os.path.abspath(os.path.expanduser(path))
    nested = os.path.join(path, "bigbench", "benchmark_tasks")
    return nested if os.path.isdir(nested) else path


def _register_named(tasks_dir: str, source: str) -> list[str]:
    """Registers the checkout that `source` (a variable or gin parameter) names."""
    if not os.path.isdir(os.path.expanduser(tasks_dir)):
        raise UserError(f"{source} is not a directory: {tasks_dir}")
    return register_bigbench(tasks_dir)


@gin.config.register_finalize_hook
def _register_bound_checkout(config) -> None:
    """Registers the checkout bound to `GIN_PARAMETER`, if any: gin files and flags are parsed
    after this module is imported, so the binding is known only when the config is finalized."""
    del config  # read through gin, which resolves macros and references
    tasks_dir = gin.get_bindings(register_checkout).get("tasks_dir")
    if tasks_dir is not None:
        _register_named(tasks_dir, GIN_PARAMETER)


def _checkout_given() -> bool:
    return any(name.startswith(PREFIX + ".") for name in _TASK_FILES)


def _sample(names: list[str], size: int) -> list[str]:
    """A fixed pseudo-random subset of `names` (by a hash of each name), in sorted order."""
    return sorted(sorted(names, key=lambda name: _digest(f"sample|{name}"))[:size])


def _capped_rate(task: seqio.Task, cap_fn: Callable[[], int | None]) -> float:
    """Examples-proportional rate: min(train examples, cap), or uncapped for cap None."""
    cap = cap_fn()
    count = num_examples(task.name, "train")
    return float(count if cap is None else min(count, cap))


def _task_file(task_name: str) -> _TaskFile:
    if task_name not in _TASK_FILES:
        if task_name.startswith(PREFIX + ".") and not _checkout_given():
            raise UserError(f"BIG-bench task {task_name!r}: {NO_CHECKOUT}")
        raise UserError(f"unknown BIG-bench task {task_name!r} (see `recross data list`)")
    return _TASK_FILES[task_name]


def _task_files(tasks_dir: str) -> list[str]:
    """The leaf task.json files under `tasks_dir` (relative paths, sorted): tasks and subtasks."""
    if not os.path.isdir(tasks_dir):
        raise UserError(f"BIG-bench tasks directory not found: {tasks_dir}")
    leaves = []
    for task in sorted(os.listdir(tasks_dir)):
        if not os.path.isfile(os.path.join(tasks_dir, task, "task.json")):
            continue  # a programmatic task, or not a task at all
        subtasks = sorted(s for s in os.listdir(os.path.join(tasks_dir, task))
                          if os.path.isfile(os.path.join(tasks_dir, task, s, "task.json")))
        leaves += [f"{task}/{s}/task.json" for s in subtasks] or [f"{task}/task.json"]
    if not leaves:
        raise UserError(f"no BIG-bench task.json files under {tasks_dir}")
    return leaves


def _is_multiple_choice(raw: Mapping, task_json: Mapping) -> bool:
    return "target_scores" in raw and (
        "target" not in raw or task_json.get("preferred_score") == "multiple_choice_grade")


def _canonical(raw: Mapping) -> str:
    return json.dumps(raw, sort_keys=True, ensure_ascii=False)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _read_task_json(task_file: _TaskFile) -> dict:
    path = task_file.path
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read BIG-bench task file {path}: {e}") from e
    raws = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(raws, list):
        raise UserError(f"{path}: no 'examples' list and no subtask directories")
    for i, raw in enumerate(raws):
        if not (isinstance(raw, dict) and "input" in raw
                and ("target" in raw or raw.get("target_scores"))):
            raise UserError(f"{path}: example {i} needs 'input' and 'target' or 'target_scores'")
        if "target" in raw and isinstance(raw["target"], list) and not raw["target"]:
            raise UserError(f"{path}: example {i} has an empty 'target' list")
    return data


def _split(task_file: _TaskFile) -> tuple[dict, dict[str, list[tuple[int, dict]]]]:
    """Reads one task.json; returns it and its (position, example) pairs per split.

    The hash key is the task's path in BIG-bench plus the example's content, so the split does
    not depend on the registered name, on the order of examples or on the process.
    """
    data = _read_task_json(task_file)
    keyed: dict[str, list[tuple[int, int, dict]]] = {split: [] for split in common.SPLITS}
    seen = set()
    for index, raw in enumerate(data["examples"]):
        key = f"{os.path.dirname(task_file.relative)}|{_canonical(raw)}"
        if key in seen:  # a duplicate example (BIG-bench drops them too)
            continue
        seen.add(key)
        keyed[common.hashed_split(key)].append((_digest("order|" + key), index, raw))
    return data, {split: [(index, raw) for _, index, raw in sorted(rows, key=lambda r: r[:2])]
                  for split, rows in keyed.items()}


@functools.lru_cache(maxsize=4)
def _load(task_file: _TaskFile, task_name: str) -> dict[str, list[dict]]:
    """The formatted examples per split of one task.json (cached: files reach 77 MB)."""
    data, splits = _split(task_file)
    return {split: [format_example(raw, data, task=task_name, split=split, index=index)
                    for index, raw in rows]
            for split, rows in splits.items()}


@functools.cache
def _index(tasks_dir: str) -> dict[str, dict[str, int]]:
    """Examples per split of every leaf task.json under `tasks_dir`, cached on disk.

    The cache file is keyed by the listing's paths, sizes and mtimes, so an edited or
    replaced task directory gets a fresh index.
    """
    relatives = _task_files(tasks_dir)
    stats = [(r, os.stat(os.path.join(tasks_dir, r))) for r in relatives]
    fingerprint = hashlib.sha256(json.dumps(
        [_INDEX_VERSION, tasks_dir, common.SPLITS]
        + [(r, s.st_size, s.st_mtime_ns) for r, s in stats]).encode()).hexdigest()[:20]
    path = os.path.join(assets.cache_dir(), "bigbench_index", f"{fingerprint}.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    counts = {}
    for relative in tqdm(relatives, desc="indexing BIG-bench tasks", file=sys.stderr,
                         leave=False):
        _, splits = _split(_TaskFile(tasks_dir, relative))
        counts[relative] = {split: len(rows) for split, rows in splits.items()}
    write_json_atomic(path, counts)
    return counts


def _register_from_environment() -> None:
    """Registers the checkout named by `$RECROSS_BIGBENCH_DIR`, if set (nothing otherwise)."""
    tasks_dir = os.environ.get(ENV_VAR)
    if tasks_dir:
        _register_named(tasks_dir, f"${ENV_VAR}")


_register_from_environment()
corpus.register_unknown_name_hint(PREFIX, lambda: None if _checkout_given() else NO_CHECKOUT)
