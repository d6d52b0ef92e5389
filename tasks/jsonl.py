"""A task family over JSONL files, so users bring their own prompted data; and TaskWeb's split.

Each line of a file is one prompted example, a JSON object with
  - `inputs` (string, required): the prompted input;
  - `targets` (string, or a non-empty list of strings whose first one is the target and all of
    which are gold answers for EM and SoftEM; null marks an unlabeled line, which is skipped, as
    are the TaskWeb lines a template did not apply to);
  - `choices` (list of strings or null, optional): answer choices, for rank classification;
  - `task` (string, optional): the example's task, default the registered task name (a file
    may mix tasks; `register_jsonl_task(..., row_task=False)` ignores the field and names every
    example by the registered task, as TaskWeb's one-task files need);
  - `template` (string, optional): the prompt's name, default "default";
  - `raw_id` (string, optional): names the raw example the line was prompted from, so that the
    prompted variants of one raw example (one per template) share it.
Other fields are ignored; blank lines are skipped. A line that breaks these rules is a
`UserError` naming the file and the line number.

Splits (`register_jsonl_task`):
  - a directory holding `train.jsonl`, `validation.jsonl` and/or `test.jsonl`: one split per file
    present;
  - a single file: every line goes to train/validation/test by a hash (`tasks.common.hashed_split`)
    of its task and `raw_id`, so all prompted variants of one raw example land in one split; a
    line without `raw_id` hashes its task, inputs and targets, so prompted variants of one raw
    example (which differ in `inputs`) may land in different splits. Either way the split never
    depends on line order and duplicates stay together.
Example ids are "task name|split|template|#line" with the 0-based line in its file.

TaskWeb (SPEC §4): tasks `p3mini.<task>` over `<taskweb_dir>/<task>.jsonl` and mixtures
`p3mini_upstream` / `p3mini_targets`. TaskWeb's lines carry no `raw_id` (nothing in them names
the raw example a line was prompted from), so their split stays per line and the prompted
variants of one raw example can straddle train and test. The directory comes from gin
(`tasks.jsonl.taskweb_dir.path`), else `$RECROSS_TASKWEB_DIR`, else `../shared/data/taskweb/tasks`
beside the repository; it is looked up when a task is iterated, so gin files may bind it after
importing this module, and a missing directory is a `UserError` then.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import gin
import seqio

from recross_jax import io_utils
from recross_jax.errors import UserError
from tasks import common

SPLIT_FILES = {split: f"{split}.jsonl" for split in common.SPLITS}
DEFAULT_TEMPLATE = "default"

TASKWEB_UPSTREAM = ("boolq", "cosmosqa", "imdb", "mrpc", "qnli", "qqp", "quartz", "rotten_tomatoes",
                    "scitail", "snli", "socialiqa", "squad_v2", "stsb")
TASKWEB_TARGETS = ("anli_r3", "cb", "copa", "hellaswag", "piqa", "rte", "story_cloze", "wic",
                   "winogrande", "wsc")
_REPO_TASKWEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 os.pardir, "shared", "data", "taskweb", "tasks")

PathOrDir = str | Callable[[], str]


def read_jsonl(path: str) -> tuple[tuple[int, dict], ...]:
    """(0-based line number, JSON object) for every non-blank line of `path`, cached by path,
    modification time and size (so an edited file is read again).

    Raises:
      UserError: the file is missing, or a line is not a JSON object (names file and line).
    """
    try:
        stat = os.stat(path)
    except OSError as e:
        raise UserError(f"JSONL file not found: {path}") from e
    return _read_jsonl(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read_jsonl(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, dict], ...]:
    del mtime_ns, size
    return tuple((number - 1, row) for number, row in io_utils.read_jsonl(path))


def parse_row(row: dict, *, where: str, task: str) -> dict | None:
    """Checks one row; returns its example fields (SPEC §0, without `example_id`; a valid
    `raw_id` stays in `row`), or None for an unlabeled row (null `targets`).

    Args:
      row: the JSON object of one line.
      where: "file:line", for error messages.
      task: the task name to use when the row has no `task`.
    """
    inputs = row.get("inputs")
    if not isinstance(inputs, str):
        raise UserError(f"{where}: `inputs` must be a string, got {_kind(inputs)}")
    targets = row.get("targets")
    if targets is None:
        return None
    golds = targets if isinstance(targets, list) else [targets]
    if not golds or not all(isinstance(t, str) for t in golds):
        raise UserError(f"{where}: `targets` must be a string or a non-empty list of strings, "
                        f"got {_kind(targets)}")
    choices = row.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: `choices` must be a list of strings, got {_kind(choices)}")
    for key in ("task", "template", "raw_id"):
        if key in row and not isinstance(row[key], str):
            raise UserError(f"{where}: `{key}` must be a string, got {_kind(row[key])}")
    return {"inputs": inputs, "targets": golds[0], "gold_answers": golds, "answer_choices": choices,
            "task": row.get("task", task), "template": row.get("template", DEFAULT_TEMPLATE)}


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


@dataclasses.dataclass(frozen=True)
class JsonlTask:
    """A registered JSONL task.

    Attributes:
      name: the seqio task name.
      path: a file or directory, or a function returning one (looked up on each read).
      fractions: train/validation/test shares of the hashed split of a single file.
      salt: changes the hashed split without changing its shares.
      row_task: whether a row's `task` field names its example's task; False: every example
        is this task (the field still seeds the hashed split, so the split does not change).
    """
    name: str
    path: PathOrDir
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    salt: str = ""
    row_task: bool = True

    def resolve(self) -> str:
        """The file or directory now, or a UserError if it does not exist."""
        path = self.path() if callable(self.path) else self.path
        if not os.path.exists(path):
            raise UserError(f"JSONL data not found for task {self.name!r}: {path}")
        return path

    def split_files(self) -> dict[str, str] | None:
        """Split -> file for a directory of per-split files; None for a single hashed file."""
        path = self.resolve()
        if not os.path.isdir(path):
            return None
        files = {split: os.path.join(path, file) for split, file in SPLIT_FILES.items()
                 if os.path.isfile(os.path.join(path, file))}
        if not files:
            raise UserError(f"no {', '.join(SPLIT_FILES.values())} in {path} (task {self.name!r})")
        return files

    def examples(self, split: str) -> list[dict]:
        """The examples of one split, in file order."""
        files = self.split_files()
        if files is None:
            if split not in common.SPLITS:
                raise UserError(f"task {self.name!r} has no split {split!r} (it has: "
                                f"{', '.join(common.SPLITS)})")
            path, hashed = self.resolve(), True
        elif split in files:
            path, hashed = files[split], False
        else:
            raise UserError(f"task {self.name!r} has no split {split!r} (files: "
                            f"{', '.join(sorted(os.path.basename(f) for f in files.values()))})")
        result = []
        for line_no, row in read_jsonl(path):
            fields = parse_row(row, where=f"{path}:{line_no + 1}", task=self.name)
            if fields is None:
                continue
            if hashed and common.hashed_split(
                    _split_key(fields, row.get("raw_id")), self.fractions, self.salt) != split:
                continue
            if not self.row_task:
                fields["task"] = self.name
            example_id = common.example_id(self.name, split, fields["template"], line_no)
            result.append(common.make_example(**fields, example_id=example_id))
        return result


def _split_key(fields: dict, raw_id: str | None) -> str:
    """What a line's hashed split keys on: its task and raw example when the line names it,
    else its task, inputs and targets. (The row's own task: `row_task` does not move lines.)"""
    parts = (fields["task"], raw_id) if raw_id is not None else (
        fields["task"], fields["inputs"], fields["targets"])
    return "\x1f".join(parts)


_TASKS: dict[str, JsonlTask] = {}


def register_jsonl_task(name: str, path_or_dir: PathOrDir, *, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                        salt: str = "", row_task: bool = True) -> seqio.Task:
    """Registers a seqio task over a JSONL file or a directory of per-split JSONL files.

    Args:
      name: the task name.
      path_or_dir: a `.jsonl` file (hashed split) or a directory with `train.jsonl`,
        `validation.jsonl` and/or `test.jsonl`; or a function returning one, called on each read
        (then the file is assumed single and hashed, and a missing path fails on iteration).
      fractions: train/validation/test shares of the hashed split.
      salt: changes the hashed split without changing its shares.
      row_task: take each example's task from its row's `task` field (default); False: name
        every example by `name`.

    Raises:
      UserError: a given path does not exist, or a directory holds no split file.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise UserError(f"split fractions of task {name!r} must be three non-negative shares "
                        f"summing to 1, got {fractions}")
    task = JsonlTask(name, path_or_dir, fractions, salt, row_task)
    files = None if callable(path_or_dir) else task.split_files()
    _TASKS[name] = task
    return common.register_task(name, task.examples,
                                splits=tuple(files) if files else common.SPLITS)


def is_jsonl_task(name: str) -> bool:
    """Whether `name` was registered by `register_jsonl_task`."""
    return name in _TASKS


def examples(name: str, split: str) -> list[dict]:
    """The examples of a registered JSONL task's split, as plain Python dicts."""
    if name not in _TASKS:
        raise UserError(f"unknown JSONL task: {name!r} (see `recross data list`)")
    return _TASKS[name].examples(split)


@gin.configurable
def taskweb_dir(path: str | None = None) -> str:
    """The TaskWeb `tasks/` directory: gin binding, `$RECROSS_TASKWEB_DIR`, or the default."""
    path = path or os.environ.get("RECROSS_TASKWEB_DIR")
    if path is None:
        if not os.path.isdir(_REPO_TASKWEB_DIR):
            default = os.path.normpath(_REPO_TASKWEB_DIR)
            raise UserError("TaskWeb data directory not set: bind tasks.jsonl.taskweb_dir.path or "
                            f"set $RECROSS_TASKWEB_DIR (default {default} does not exist)")
        path = _REPO_TASKWEB_DIR
    if not os.path.isdir(path):
        raise UserError(f"TaskWeb data directory not found: {path}")
    return os.path.normpath(path)


def _taskweb_file(task: str) -> str:
    return os.path.join(taskweb_dir(), f"{task}.jsonl")


def _register_taskweb() -> None:
    for task in TASKWEB_UPSTREAM + TASKWEB_TARGETS:
        # Example tasks are the registered names (the rows say "cb"), so `exclude_tasks`, the
        # target's own exclusion and reports all speak of p3mini.<task>.
        register_jsonl_task(f"p3mini.{task}", functools.partial(_taskweb_file, task), row_task=False)
    common.register_mixture("p3mini_upstream", [f"p3mini.{task}" for task in TASKWEB_UPSTREAM])
    common.register_mixture("p3mini_targets", [f"p3mini.{task}" for task in TASKWEB_TARGETS])


_register_taskweb()
