"""PromptSource (P3) tasks: T0's training datasets and the ReCross targets.

One seqio task per (dataset, template), named like T0's P3 tasks:
`p3.<dataset>[_<subset>].<template>` with every run of characters other than letters, digits
and `_` replaced by `_` (e.g. `p3.super_glue_wsc_fixed.GPT_3_Style`, `p3.anli_r3.can_we_infer`).
Each example is `template.apply(row)` of the real promptsource template: `inputs`, `targets`,
`answer_choices` (`template.get_answer_choices_list(row)`, empty when the template has none),
`task` (the dataset, e.g. `super_glue_cb`: all templates of a dataset are one task), `template`
(promptsource's template name) and `example_id` ("task|split|template|#row"). Rows a template
yields no target for (templates guarded by a condition) are skipped, as in T0, and so are
unlabeled rows (label -1 or "", e.g. hidden test labels).

Mixtures:
  - `t0_train`: every template of the 36 upstream datasets of ReCross (metax/config.py), i.e.
    T0's 38 training (dataset, subset) pairs without quarel and trec.
  - `p3_recross_targets`: the templates of the 10 ReCross targets that exact match can evaluate.
    The rule (`evaluable_by_exact_match`): the template's metadata says `original_task: true`
    and it either has answer choices (the target is one of them, so EM equals rank-classification
    accuracy) or its metric is `Squad` (squad_v2's extractive templates).
  - `p3.<dataset>` for each target dataset: its evaluable templates (one target task U).

Registration reads only promptsource's bundled YAML templates, so it needs no network. Rows are
read when a split is iterated, from the first of:
  1. a local directory, `data_dir` (gin `tasks.p3.data_dir.path`, else `$RECROSS_P3_DIR`), laid out
     like promptsource's template folders: `<dir>/<dataset>[/<subset>]/<split>.jsonl`, one raw row
     (a JSON object with the HF dataset's fields) per line, with HF's split names (anli uses
     `train_r3`, `dev_r3`, `test_r3`; wiki_bio `val`). `datasets.Dataset.to_json(path)` writes
     exactly this format;
  2. the HF `datasets` library (imported lazily; not installed by default), when reachable.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Callable, Iterable, Mapping, Sequence

import gin

from recross_jax.errors import UserError
from tasks import common, promptsource_templates
from tasks.jsonl import read_jsonl

SPLITS = common.SPLITS
_ALL_SPLITS = {split: split for split in SPLITS}
_TRAIN_VALIDATION = {"train": "train", "validation": "validation"}
_TRAIN_TEST = {"train": "train", "test": "test"}


def sanitize(text: str) -> str:
    """A task-name component: runs of characters other than [A-Za-z0-9_] become one `_`."""
    return re.sub(r"\W+", "_", text, flags=re.ASCII).strip("_")


@dataclasses.dataclass(frozen=True)
class P3Dataset:
    """A HF dataset (and subset) with promptsource templates.

    Attributes:
      hf_name: the HF dataset name, also promptsource's template folder.
      hf_subset: the HF configuration, or None.
      hf_splits: our split name -> the HF split name, for the splits the dataset has.
      name: the task-name prefix; defaults to `<hf_name>[_<hf_subset>]`, sanitized.
      label_field: the row field that holds the label; a row where it is -1 or "" is unlabeled
        (HF's convention for hidden test labels) and skipped, since some templates index the
        answer choices with it unguarded.
    """
    hf_name: str
    hf_subset: str | None = None
    hf_splits: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(_ALL_SPLITS), hash=False)
    name: str = ""
    label_field: str = "label"

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", sanitize(
                self.hf_name if self.hf_subset is None else f"{self.hf_name}_{self.hf_subset}"))


# ReCross's upstream datasets (T0's training datasets without quarel and trec), with the splits
# each one has on the HF hub.
T0_TRAIN_DATASETS = (
    P3Dataset("glue", "mrpc"),
    P3Dataset("glue", "qqp"),
    P3Dataset("paws", "labeled_final"),
    P3Dataset("kilt_tasks", "hotpotqa", _TRAIN_VALIDATION),
    P3Dataset("wiki_qa"),
    P3Dataset("adversarial_qa", "dbidaf"),
    P3Dataset("adversarial_qa", "dbert"),
    P3Dataset("adversarial_qa", "droberta"),
    P3Dataset("duorc", "SelfRC"),
    P3Dataset("duorc", "ParaphraseRC"),
    P3Dataset("ropes"),
    P3Dataset("quoref", None, _TRAIN_VALIDATION),
    P3Dataset("cos_e", "v1.11", _TRAIN_VALIDATION),
    P3Dataset("cosmos_qa"),
    P3Dataset("dream"),
    P3Dataset("qasc"),
    P3Dataset("quail", None, _TRAIN_VALIDATION),
    P3Dataset("quartz"),
    P3Dataset("sciq"),
    P3Dataset("social_i_qa", None, _TRAIN_VALIDATION),
    P3Dataset("wiki_hop", "original", _TRAIN_VALIDATION),
    P3Dataset("wiqa"),
    P3Dataset("amazon_polarity", None, _TRAIN_TEST),
    P3Dataset("app_reviews", None, {"train": "train"}),
    P3Dataset("imdb", None, _TRAIN_TEST),
    P3Dataset("rotten_tomatoes"),
    P3Dataset("yelp_review_full", None, _TRAIN_TEST),
    P3Dataset("common_gen"),
    P3Dataset("wiki_bio", None, {"train": "train", "validation": "val", "test": "test"}),
    P3Dataset("cnn_dailymail", "3.0.0"),
    P3Dataset("gigaword"),
    P3Dataset("multi_news"),
    P3Dataset("samsum"),
    P3Dataset("xsum"),
    P3Dataset("ag_news", None, _TRAIN_TEST),
    P3Dataset("dbpedia_14", None, _TRAIN_TEST),
)

RECROSS_TARGET_DATASETS = (
    P3Dataset("anli", None, {"train": "train_r3", "validation": "dev_r3", "test": "test_r3"},
              name="anli_r3"),
    P3Dataset("hellaswag"),
    P3Dataset("super_glue", "cb"),
    P3Dataset("super_glue", "wic"),
    P3Dataset("super_glue", "wsc.fixed"),
    P3Dataset("winogrande", "winogrande_xl", label_field="answer"),
    P3Dataset("ai2_arc", "ARC-Challenge"),
    P3Dataset("openbookqa", "main"),
    P3Dataset("piqa"),
    P3Dataset("squad_v2", None, _TRAIN_VALIDATION),
)


@dataclasses.dataclass(frozen=True)
class P3Task:
    """One registered task: a template of a dataset."""
    name: str
    dataset: P3Dataset
    template_name: str


_TASKS: dict[str, P3Task] = {}


def task_name(dataset: P3Dataset, template_name: str) -> str:
    """The seqio name of one (dataset, template) task."""
    return f"p3.{dataset.name}.{sanitize(template_name)}"


@gin.configurable
def data_dir(path: str | None = None) -> str | None:
    """The local P3 row directory: the gin binding, else `$RECROSS_P3_DIR`, else None (HF)."""
    return path or os.environ.get("RECROSS_P3_DIR") or None


@gin.configurable
def template_seed(seed: int = 0) -> int:
    """Seeds the templates' random choices (e.g. `answers.text | choice`) per row."""
    return seed


def evaluable_by_exact_match(template) -> bool:
    """Whether exact match evaluates the template, the rule behind `p3_recross_targets`.

    The template must ask for the dataset's original task, and either have answer choices (the
    target is one of them) or be scored like SQuAD (an extractive span).
    """
    metadata = template.metadata
    return bool(metadata.original_task) and (
        template.get_answer_choices_expr() is not None or "Squad" in (metadata.metrics or []))


def dataset_templates(dataset: P3Dataset):
    """promptsource's `DatasetTemplates` of a dataset, read from the bundled YAML."""
    return promptsource_templates.dataset_templates(dataset.hf_name, dataset.hf_subset)


def get_task(name: str) -> P3Task:
    """The registered P3 task `name`, or a UserError."""
    if name not in _TASKS:
        raise UserError(f"unknown P3 task: {name!r} (see `recross data list`)")
    return _TASKS[name]


def is_p3_task(name: str) -> bool:
    """Whether `name` is a registered P3 task."""
    return name in _TASKS


def format_rows(name: str, rows: Iterable[Mapping], split: str,
                limit: int | None = None) -> list[dict]:
    """Applies task `name`'s template to raw rows (e.g. HF dataset rows) of `split`.

    Unlabeled rows and rows the template yields no target (or an empty input) for are
    skipped; ids keep the row's
    position, so all templates of a row share its index. Stops after `limit` examples.
    """
    task = get_task(name)
    template = dataset_templates(task.dataset)[task.template_name]
    seed = template_seed()
    result = []
    for index, row in enumerate(rows):
        if limit is not None and len(result) >= limit:
            break
        if row.get(task.dataset.label_field, 0) in (-1, ""):
            continue
        promptsource_templates.ROW_RNG.seed(f"{seed}|{task.dataset.name}|{split}|{index}")
        parts = template.apply(row)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            continue
        result.append(common.make_example(
            inputs=parts[0],
            targets=parts[1],
            answer_choices=template.get_answer_choices_list(row) or [],
            task=task.dataset.name,
            template=task.template_name,
            example_id=common.example_id(task.dataset.name, split, task.template_name, index),
        ))
    return result


def examples(name: str, split: str, limit: int | None = None) -> list[dict]:
    """The prompted examples of task `name`'s `split` (the first `limit` of them)."""
    return format_rows(name, load_rows(get_task(name).dataset, split), split, limit)


def load_rows(dataset: P3Dataset, split: str) -> list[dict]:
    """Raw rows of one split: from the local directory when set, else from HF `datasets`."""
    if split not in dataset.hf_splits:
        raise UserError(f"P3 dataset {dataset.name!r} has no split {split!r} "
                        f"(it has: {', '.join(dataset.hf_splits)})")
    root = data_dir()
    if root is None:
        return _hf_rows(dataset.hf_name, dataset.hf_subset, dataset.hf_splits[split])
    if not os.path.isdir(root):
        raise UserError(f"P3 data directory not found: {root} (set $RECROSS_P3_DIR or bind "
                        "tasks.p3.data_dir.path)")
    path = local_path(root, dataset, split)
    if not os.path.isfile(path):
        raise UserError(f"P3 rows not found: {path} (one JSON row of {dataset.hf_name}"
                        f"{'/' + dataset.hf_subset if dataset.hf_subset else ''} per line)")
    return [row for _, row in read_jsonl(path)]


def local_path(root: str, dataset: P3Dataset, split: str) -> str:
    """Where the local layout keeps the rows of one split."""
    parts = [root, dataset.hf_name] + ([dataset.hf_subset] if dataset.hf_subset else [])
    return os.path.join(*parts, f"{dataset.hf_splits[split]}.jsonl")


# Cached because every template of a dataset reads the same rows.
@functools.lru_cache(maxsize=4)
def _hf_rows(hf_name: str, hf_subset: str | None, hf_split: str) -> list[dict]:
    try:
        import datasets  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise UserError(f"no data for P3 dataset {hf_name}: set $RECROSS_P3_DIR (or bind "
                        "tasks.p3.data_dir.path) to a directory of JSONL rows, or install "
                        "`datasets`") from e
    try:
        return list(datasets.load_dataset(hf_name, hf_subset, split=hf_split))
    except Exception as e:  # pylint: disable=broad-except
        # Whatever the hub or the cache says (offline, renamed dataset), the fix is the same.
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load HF dataset {hf_name}/{hf_subset} split {hf_split}: "
                        f"{message} (set $RECROSS_P3_DIR to a local copy)") from e


def _register(p3_datasets: Sequence[P3Dataset],
              keep: Callable[[object], bool] = lambda template: True) -> dict[str, list[str]]:
    """Registers one task per kept template of each dataset; returns task names per dataset."""
    registered = {}
    for dataset in p3_datasets:
        templates = dataset_templates(dataset)
        names = []
        for template_name in sorted(templates.all_template_names):
            if not keep(templates[template_name]):
                continue
            name = task_name(dataset, template_name)
            if name in names:
                raise RuntimeError(f"two templates of {dataset.name} sanitize to {name}")
            _TASKS[name] = P3Task(name, dataset, template_name)
            common.register_task(
                name, functools.partial(examples, name), splits=tuple(dataset.hf_splits))
            names.append(name)
        registered[dataset.name] = names
    return registered


def _register_all() -> None:
    upstream = _register(T0_TRAIN_DATASETS)
    common.register_mixture("t0_train", [name for names in upstream.values() for name in names])
    targets = _register(RECROSS_TARGET_DATASETS, keep=evaluable_by_exact_match)
    for dataset_name, names in targets.items():
        common.register_mixture(f"p3.{dataset_name}", names)
    common.register_mixture("p3_recross_targets",
                            [name for names in targets.values() for name in names])


_register_all()
