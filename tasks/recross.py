"""The ReCross release: the paper's own prompted P3 and BIG-bench data, embedded (SPEC §4).

Data. `tasks/recross_release/` holds the `data/` folder of the ReCross authors' repository (MIT,
`LICENSE` there), every JSON file xz-compressed under its own name, and `MANIFEST.json` with each
file's sha256, size and row count (`scripts/embed_recross_release.py` builds it). A file is
checked against the manifest when it is first read: a truncated or altered copy is a UserError
naming it. `$RECROSS_RELEASE_DIR` points the module at another copy. Nothing is read at import.

Tasks. One task per dataset of the release (the paper's unit: all templates of a dataset are one
task), named `recross.<dataset>` with characters other than letters, digits and `_` replaced by
`_` (`recross.super_glue_cb`, `recross.ai2_arc_ARC_Challenge`, `recross.strategyqa`). Each
release row `[input, [output, ...], "dataset|split|template|#index"]` becomes an example with
SPEC §0's fields: `example_id` is the release id, `template` the PromptSource template name in
it, `task` the registered task name, `targets` the first output and `gold_answers` all of them.

Splits. `train` = `upstream-5000.json`, `validation` = `validation-1000.json`, `test` =
`test-1000.json`. Where a dataset has no `upstream-5000.json` (`STANDIN_DATASETS`), its
`validation-1000.json` stands in: a seeded share of its raw examples (`standin_split`) becomes
`validation` and the rest `train`, so all templates of a raw example stay on one side and no two
splits share a row. BIG-bench targets have `test` only. Within a split, rows are ordered by a
hash of their id, so any prefix of a split is a uniform sample (`max_examples` and caps take
prefixes). A *raw example* is the release id without its template part: one raw example appears
under several templates, and the release's `upstream-5000` and `validation-1000` files share raw
examples of many datasets (different templates of one row; the README has the counts).

Answer choices, in order of preference:
  1. PromptSource's template (`tasks.promptsource_templates`) when its choices are fixed
     (`get_fixed_answer_choices_list`): anli, cb, wic, wsc, ...;
  2. BIG-bench inputs list their choices inline, one per `choice: ...` line;
  3. templates that print row-dependent choices in the input (`choices_in_prompt.json`) have one
     parsing rule each in `PROMPT_CHOICE_RULES` (Table-1 targets' templates);
otherwise the example is generative (`answer_choices` empty) and scored by (Soft)EM only.

Mixtures. `t0_upstream`, `t0p_upstream`, `t0pp_upstream` (the release's `split.json`: T0's 36
datasets, T0+'s 46, T0++'s 52; `multi_news` and `wiki_hop-original` have no files in the release
and are left out), `recross_targets` (Table 1) and `recross_bigbench_targets` (Table 2). Upstream
mixtures are examples-proportional, capped per task by `upstream_cap` (gin), which also caps the
upstream tasks' `train` split at the source (the first `cap` rows of the hash order).

Query sets (`query_sets`, registered with `recross_jax.corpus` for `recross generalize`):
BIG-bench targets use the authors' own (`fewshot.json` rounds 0..4, the first |Q| rows of each);
P3 targets seeded disjoint draws of `validation-1000.json`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
import re
from typing import Callable, Mapping, Sequence

import gin
import numpy as np

from recross_jax import corpus
from recross_jax.errors import UserError
from tasks import common, promptsource_templates

PREFIX = "recross"
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recross_release")
MANIFEST = "MANIFEST.json"
SPLIT_FILES = {"train": "upstream-5000.json", "validation": "validation-1000.json",
               "test": "test-1000.json"}
FEWSHOT_FILE = "fewshot.json"

# split.json's upstream sets; `multi_news` and `wiki_hop-original` have no file in the release.
UPSTREAM_SETS = {"t0_upstream": "T0", "t0p_upstream": "T0p", "t0pp_upstream": "T0pp"}
MISSING_DATASETS = ("multi_news", "wiki_hop-original")
TABLE1_TARGETS = ("anli_r3", "hellaswag", "super_glue-cb", "super_glue-wic", "super_glue-wsc.fixed",
                  "winogrande-winogrande_xl", "ai2_arc-ARC-Challenge", "openbookqa-main", "piqa",
                  "squad_v2")
TABLE2_TARGETS = ("hindu_knowledge", "known_unknowns", "logic_grid_puzzle", "strategyqa",
                  "movie_dialog_same_or_different")
BIGBENCH_DATASETS = TABLE2_TARGETS + (
    "code_line_description", "formal_fallacies_syllogisms_negation", "misconceptions",
    "novel_concepts", "vitaminc_fact_verification", "winowhy")
# T0's multiple-choice QA group (its paper's Figure 2; wiki_hop-original has no file here): the
# group the study's group-removal ablation (the ReCross paper's Table 4) takes out of the pool.
T0_MULTIPLE_CHOICE_QA = ("cos_e-v1.11", "cosmos_qa", "dream", "qasc", "quail", "quartz", "sciq",
                         "social_i_qa", "wiqa")
# The positive control (issue 22): one dataset held out of T0's upstream set while its family
# stays in, so the one target where the right upstream examples are known.
CONTROL_DATASET = "rotten_tomatoes"
CONTROL_FAMILY = ("amazon_polarity", "app_reviews", "imdb", "yelp_review_full")
CONTROL_MIXTURE = "t0_upstream_without_rotten_tomatoes"
# Datasets without `upstream-5000.json` (the mirror lacked them): `validation-1000` stands in.
STANDIN_DATASETS = (
    "adversarial_qa-dbert", "adversarial_qa-dbidaf", "adversarial_qa-droberta",
    "cnn_dailymail-3.0.0", "dream", "duorc-ParaphraseRC", "duorc-SelfRC", "hellaswag", "imdb",
    "quail", "quoref", "race-high", "race-middle", "ropes", "squad_v2", "super_glue-multirc",
    "super_glue-record", "wiki_bio", "xsum")
NUM_FEWSHOT_ROUNDS = 20
_CHOICE_LINE = re.compile(r"^\s*choice: (.*)$", re.MULTILINE)


# --- Answer choices printed in the prompt: one rule per template --------------------------------

def _lines(pattern: str) -> Callable[[str], list[str]]:
    """A rule taking group 1 of every line matching `pattern` (stripped) as the choices."""
    regex = re.compile(pattern, re.MULTILINE)
    return lambda text: [match.group(1).strip() for match in regex.finditer(text)]


def _pair(pattern: str) -> Callable[[str], list[str]]:
    """A rule taking groups 1 and 2 of the first match of `pattern` as the two choices."""
    regex = re.compile(pattern)

    def rule(text: str) -> list[str]:
        match = regex.search(text)
        return [match.group(1).strip(), match.group(2).strip()] if match else []
    return rule


_DASH = _lines(r"^- (.+)$")                         # "- Record the details ..."
_DASH_LABEL = _lines(r"^- ([A-Z0-9]): ")            # "- D: Record ..." -> "D"
_PAREN = _lines(r"^\([a-z]\) +(.+)$")               # "(c)  sit in a canoe ..."
_SOLUTION = _lines(r"^Solution \d+: (.+)$")         # "Solution 2: finish, woodgrain ..."

PROMPT_CHOICE_RULES: dict[tuple[str, str], Callable[[str], list[str]]] = {
    ("ai2_arc-ARC-Challenge", "heres_a_problem"): _DASH_LABEL,
    ("ai2_arc-ARC-Challenge", "pick_the_most_correct_option"): _DASH_LABEL,
    ("ai2_arc-ARC-Challenge", "i_am_hesitating"): _DASH,
    ("ai2_arc-ARC-Challenge", "multiple_choice"): _DASH,
    ("ai2_arc-ARC-Challenge", "qa_options"): _DASH,
    ("hellaswag", "complete_first_then"): _PAREN,
    ("hellaswag", "Randomized prompts template"): _PAREN,
    ("hellaswag", "Predict ending with hint"): _PAREN,
    ("openbookqa-main", "which_correct"): _DASH,
    ("openbookqa-main", "pick_answer_with_options"): _DASH,
    ("openbookqa-main", "only_options"): _DASH,
    ("openbookqa-main", "which_correct_inverse"): _DASH,
    ("openbookqa-main", "choices"): _DASH,
    ("openbookqa-main", "choose_an_answer_with_options"): _DASH,
    ("piqa", "pick_correct_choice_with_choice_given_before_goal"): _SOLUTION,
    ("piqa", "what_is_the_correct_ending"): _DASH,
    ("piqa", "finish_sentence_with_correct_choice"): _DASH,
    ("winogrande-winogrande_xl", "Replace"): _DASH,
    ("winogrande-winogrande_xl", "fill in the blank"): _DASH,
    ("winogrande-winogrande_xl", "does underscore refer to"): _pair(r"does _ refer to (.+) or (.+)\?$"),
    ("winogrande-winogrande_xl", "stand for"): _pair(r"does the _ stand for (.+) or (.+)\?\n"),
    ("winogrande-winogrande_xl", "underscore refer to"): _pair(r"refer to\? (.+) or (.+)\?$"),
}
# ARC-Easy prints its choices as ARC-Challenge does.
PROMPT_CHOICE_RULES.update({("ai2_arc-ARC-Easy", template): rule for (dataset, template), rule
                            in list(PROMPT_CHOICE_RULES.items()) if dataset == "ai2_arc-ARC-Challenge"})


# --- The embedded files ---------------------------------------------------------------------------

def data_dir() -> str:
    """The release directory: `$RECROSS_RELEASE_DIR`, else the copy embedded in the package."""
    return os.environ.get("RECROSS_RELEASE_DIR") or DEFAULT_DATA_DIR


@functools.lru_cache(maxsize=4)
def _manifest(root: str) -> dict:
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the ReCross release manifest {path}: {e}") from e


def has_file(dataset: str, name: str) -> bool:
    """Whether the release has `<dataset>/<name>` (by the manifest; reads no data)."""
    return f"{dataset}/{name}" in _manifest(data_dir())


def file_rows(dataset: str, name: str) -> int:
    """The number of rows of `<dataset>/<name>`, from the manifest."""
    return int(_manifest(data_dir())[f"{dataset}/{name}"]["rows"])


def read_file(relative: str):
    """The parsed JSON of one release file (e.g. `super_glue-cb/test-1000.json`), verified
    against the manifest on first read (cached after that).

    Raises:
      UserError: the file is not in the manifest, missing, truncated or altered.
    """
    return _read_verified(data_dir(), relative)


@functools.lru_cache(maxsize=16)
def _read_verified(root: str, relative: str):
    entry = _manifest(root).get(relative)
    if entry is None:
        raise UserError(f"the ReCross release has no file {relative!r} (see {root}/{MANIFEST})")
    path = os.path.join(root, relative + ".xz")
    try:
        with lzma.open(path) as f:
            data = f.read()
    except FileNotFoundError as e:
        raise UserError(f"ReCross release file missing: {path}") from e
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise UserError(f"ReCross release file {path} is corrupt or truncated ({e}); restore it "
                        "from the repository") from e
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        raise UserError(f"ReCross release file {path} does not match its manifest (sha256 "
                        f"{digest}, expected {entry['sha256']}); restore it from the repository")
    return json.loads(data)


# --- Datasets, splits and examples ----------------------------------------------------------------

def task_name(dataset: str) -> str:
    """The registered task of a release dataset: `recross.<sanitized dataset>`."""
    return f"{PREFIX}.{re.sub(r'[^A-Za-z0-9_]+', '_', dataset).strip('_')}"


@gin.configurable
def standin_split(validation_fraction: float = 0.2, seed: int = 0) -> tuple[float, int]:
    """The share of raw examples of a stand-in dataset's `validation-1000` that becomes its
    `validation` split (the rest is `train`), and the seed of that draw."""
    if not 0 < validation_fraction < 1:
        raise UserError("tasks.recross.standin_split.validation_fraction must be in (0, 1), "
                        f"got {validation_fraction}")
    return validation_fraction, seed


@gin.configurable
def upstream_cap(cap: int | None = None) -> int | None:
    """Rows per task of the upstream mixtures' `train` split (None: all, up to 5000)."""
    if cap is not None and cap < 1:
        raise UserError(f"tasks.recross.upstream_cap.cap must be positive, got {cap}")
    return cap


def splits_of(dataset: str) -> tuple[str, ...]:
    """The splits a dataset has (reads only the manifest)."""
    if dataset in STANDIN_DATASETS:
        return common.SPLITS
    return tuple(split for split, name in SPLIT_FILES.items() if has_file(dataset, name))


def _order(rows: Sequence[list]) -> list[list]:
    """Rows in the order of a hash of their id: every prefix is a uniform sample."""
    return sorted(rows, key=lambda row: hashlib.sha256(row[2].encode("utf-8")).digest())


def _rows(dataset: str, split: str) -> list[list]:
    """The release rows of one split (stand-ins split by raw example)."""
    if split not in splits_of(dataset):
        raise UserError(f"task {task_name(dataset)!r} has no split {split!r} (it has: "
                        f"{', '.join(splits_of(dataset))})")
    if dataset in STANDIN_DATASETS and split in ("train", "validation"):
        fraction, seed = standin_split()
        rows = [row for row in read_file(f"{dataset}/{SPLIT_FILES['validation']}")
                if (common.hashed_split(corpus.raw_example_id(row[2]), (1 - fraction, fraction, 0.0),
                                        salt=f"{seed}|") == "validation") == (split == "validation")]
    else:
        rows = read_file(f"{dataset}/{SPLIT_FILES[split]}")
    return _order(rows)


@functools.cache
def _choices_in_prompt() -> dict:
    return read_file("choices_in_prompt.json")


def answer_choices(dataset: str, template: str, inputs: str) -> list[str]:
    """The answer choices of one example, or [] for a generative one (see the module doc)."""
    if dataset in BIGBENCH_DATASETS:
        return [choice.strip() for choice in _CHOICE_LINE.findall(inputs)]
    fixed = _fixed_choices(dataset, template)
    if fixed:
        return list(fixed)
    rule = PROMPT_CHOICE_RULES.get((dataset, template))
    choices = rule(inputs) if rule else []
    return choices if len(choices) >= 2 else []


@functools.cache
def _fixed_choices(dataset: str, template: str) -> tuple[str, ...]:
    """PromptSource's fixed answer choices of a template, or () (row-dependent or none)."""
    templates = promptsource_templates.dataset_templates(*_promptsource_dataset(dataset))
    if template not in templates.all_template_names:
        return ()
    return tuple(choice.strip() for choice in
                 templates[template].get_fixed_answer_choices_list() or ())


def _promptsource_dataset(dataset: str) -> tuple[str, str | None]:
    """PromptSource's (dataset, subset) for a release dataset name."""
    if dataset.startswith("anli_r"):
        return "anli", None
    if dataset == "paws_x-en":
        return "paws-x", "en"
    name, _, subset = dataset.partition("-")
    return name, subset or None


def examples(name: str, split: str) -> list[dict]:
    """The examples of a registered task's split, in SPEC §0's schema (plus `gold_answers`)."""
    dataset = _dataset_of(name)
    rows = _rows(dataset, split)
    cap = upstream_cap() if split == "train" and name in _UPSTREAM_TASKS else None
    return _examples_of(dataset, name, rows[:cap])


def num_examples(name: str, split: str) -> int:
    """The number of examples of a task's split (from the manifest where no split is derived)."""
    dataset = _dataset_of(name)
    cap = upstream_cap() if split == "train" and name in _UPSTREAM_TASKS else None
    if dataset in STANDIN_DATASETS and split != "test":
        count = len(_rows(dataset, split))
    else:
        count = file_rows(dataset, SPLIT_FILES[split])
    return count if cap is None else min(count, cap)


# --- Query sets -------------------------------------------------------------------------------------

def query_sets(name: str, num_sets: int, num_queries: int, seed: int) -> list[list[dict]]:
    """The query sets of a target: the authors' own for BIG-bench (`fewshot.json` rounds
    0..num_sets-1, the first `num_queries` rows of each), else `num_sets` seeded disjoint draws
    of `num_queries` rows of `validation-1000.json`."""
    dataset = _dataset_of(name)
    if num_sets < 1 or num_queries < 1:
        raise UserError(f"query sets need num_sets >= 1 and num_queries >= 1, got {num_sets} "
                        f"and {num_queries}")
    if has_file(dataset, FEWSHOT_FILE):
        rounds = read_file(f"{dataset}/{FEWSHOT_FILE}")["16"]
        if num_sets > len(rounds) or num_queries > 16:
            raise UserError(f"{name}: the authors' query sets are {len(rounds)} rounds of 16 "
                            f"examples; asked for {num_sets} of {num_queries}")
        return [_examples_of(dataset, name, rounds[f"round#{i}"][:num_queries])
                for i in range(num_sets)]
    if not has_file(dataset, SPLIT_FILES["validation"]):
        raise UserError(f"{name} has neither the authors' query sets nor validation-1000.json")
    pool = read_file(f"{dataset}/{SPLIT_FILES['validation']}")
    needed = num_sets * num_queries
    if len(pool) < needed:
        raise UserError(f"{num_sets} query sets of {num_queries} need {needed} examples; "
                        f"{name}'s validation-1000.json has {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [_examples_of(dataset, name, [pool[j] for j in order[i * num_queries:(i + 1) * num_queries]])
            for i in range(num_sets)]


def _examples_of(dataset: str, name: str, rows: Sequence[list]) -> list[dict]:
    """Release rows `[input, [output, ...], id]` as examples of task `name`."""
    return [common.make_example(
        inputs=inputs, targets=outputs[0], gold_answers=outputs,
        answer_choices=answer_choices(dataset, release_id.split("|")[2], inputs), task=name,
        template=release_id.split("|")[2], example_id=release_id)
        for inputs, outputs, release_id in rows]


# --- Registration -----------------------------------------------------------------------------------

_DATASETS: dict[str, str] = {}      # task name -> release dataset
_UPSTREAM_TASKS: set[str] = set()   # tasks whose train split the upstream cap applies to


def _dataset_of(name: str) -> str:
    if name not in _DATASETS:
        raise UserError(f"unknown ReCross release task {name!r} (see `recross data list`)")
    return _DATASETS[name]


def _capped_rate(task) -> float:
    """Examples-proportional mixing rate: min(train examples, cap)."""
    return float(num_examples(task.name, "train"))


def datasets() -> list[str]:
    """Every dataset of the release (from the manifest)."""
    return sorted({path.split("/")[0] for path in _manifest(data_dir()) if "/" in path})


def _register(dataset: str) -> str:
    name = task_name(dataset)
    _DATASETS[name] = dataset
    common.register_task(name, functools.partial(examples, name), splits=splits_of(dataset))
    return name


def register_all() -> None:
    """Registers a task per dataset, the five mixtures and the targets' query sets (reads only
    the manifest)."""
    for dataset in datasets():
        _register(dataset)
    for mixture, split_name in UPSTREAM_SETS.items():
        members = [task_name(d) for d in _UPSTREAM_MEMBERS[split_name]]
        _UPSTREAM_TASKS.update(members)
        common.register_mixture(mixture, members, rate=_capped_rate)
    common.register_mixture(CONTROL_MIXTURE, [task_name(d) for d in _UPSTREAM_MEMBERS["T0"]
                                              if d != CONTROL_DATASET], rate=_capped_rate)
    common.register_mixture("recross_targets", [task_name(d) for d in TABLE1_TARGETS])
    common.register_mixture("recross_bigbench_targets", [task_name(d) for d in TABLE2_TARGETS])
    for dataset in TABLE1_TARGETS + BIGBENCH_DATASETS:
        corpus.register_query_source(task_name(dataset), functools.partial(query_sets, task_name(dataset)))


# split.json's three upstream sets, written out so registration reads no data file (a test checks
# them against the embedded split.json).
_T0 = ("glue-mrpc", "glue-qqp", "paws_x-en", "kilt_tasks-hotpotqa", "wiki_qa", "adversarial_qa-dbert",
       "adversarial_qa-dbidaf", "adversarial_qa-droberta", "duorc-SelfRC", "duorc-ParaphraseRC", "ropes",
       "quoref", "cos_e-v1.11", "cosmos_qa", "dream", "qasc", "quail", "quartz", "sciq", "social_i_qa",
       "wiki_hop-original", "wiqa", "amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes",
       "yelp_review_full", "common_gen", "wiki_bio", "cnn_dailymail-3.0.0", "gigaword", "multi_news",
       "samsum", "xsum", "ag_news", "dbpedia_14")
_T0P = _T0 + ("trivia_qa-unfiltered", "ai2_arc-ARC-Easy", "race-high", "piqa", "ai2_arc-ARC-Challenge",
              "squad_v2", "hellaswag", "openbookqa-main", "race-middle", "web_questions")
_T0PP = _T0P + ("super_glue-multirc", "super_glue-boolq", "super_glue-wic", "super_glue-copa",
                "super_glue-record", "super_glue-wsc.fixed")
_UPSTREAM_MEMBERS: Mapping[str, tuple[str, ...]] = {
    key: tuple(d for d in members if d not in MISSING_DATASETS)
    for key, members in (("T0", _T0), ("T0p", _T0P), ("T0pp", _T0PP))}

register_all()
