"""The per-target pipeline of ReCross and its baselines (SPEC §1.5-1.7).

For each target task and query set: take |Q| unlabeled query inputs (the task family's own query
sets where it registers them with `corpus.register_query_source`, e.g. the ReCross release's
BIG-bench targets; else seeded draws disjoint from the test inputs and from the other query sets),
retrieve |R| upstream examples with the method (never the target's own, should the pool hold
them), re-learn a fresh copy of the upstream model on them, evaluate it on the target's test
split less every example that shares a raw example with the query set (`corpus.raw_example_id`:
the same row under another template, or the same row), and write one JSON per (target, method,
query set):

    <out_dir>/runs/<target>/<method>/query_set_<i>.json

with the metrics, the retrieved example ids and their tasks, the seeds, a time per stage and the
host it ran on (`provenance.environment`). A run whose JSON exists is skipped, so an interrupted
study resumes.

Methods: `base` (no retrieval), `random` (R uniform from the pool), `sbert` (MiniLM index),
`recross_dense` (the upstream encoder's index, ReCross†), `recross` (the same with µ|R|
candidates reranked by the cross-encoder to |R|); with labeled queries also `fs` (fine-tune on
Q), `fs_recross_mix` (Q ∪ R) and `fs_recross_2stage` (R, then Q).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Any, Sequence

import jax
import numpy as np

from recross_jax import checkpoints, corpus, evaluate, finetune, partitioning, provenance
from recross_jax.errors import UserError
from recross_jax.io_utils import sha256_file, write_json_atomic
from recross_jax.retrieval import baselines, indexing

METHODS = ("base", "random", "sbert", "recross_dense", "recross")
FEW_SHOT_METHODS = ("fs", "fs_recross_mix", "fs_recross_2stage")
INDEX_OF_METHOD = {"sbert": "sbert", "recross_dense": "model", "recross": "model",
                   "fs_recross_mix": "model", "fs_recross_2stage": "model"}


@dataclasses.dataclass(frozen=True)
class QuerySet:
    """One draw of query examples of a target (their labels are used only by few-shot methods)."""

    index: int
    seed: int
    rows: tuple[dict, ...]

    @property
    def inputs(self) -> list[str]:
        return [row["inputs"] for row in self.rows]


def target_rows(task: str, split: str) -> list[dict]:
    """The text rows (inputs, targets, answer_choices, example_id) of a task's split."""
    rows = []
    for task_obj in corpus.tasks_of(task):
        for example in corpus.iter_examples(task_obj, split):
            rows.append({"example_id": example["example_id"], "task": example["task"],
                         "inputs": example["inputs_pretokenized"],
                         "targets": example["targets_pretokenized"],
                         "answer_choices": example["answer_choices"]})
    return rows


def run_seed(seed: int, target: str, query_set: int) -> int:
    """The seed of one (target, query set) run, so that e.g. the random baseline draws a different
    sample for every target and query set, and the same one on every re-run."""
    state = np.random.SeedSequence([seed, zlib.crc32(target.encode("utf-8")), query_set])
    return int(state.generate_state(1)[0])


def draw_query_sets(candidates: Sequence[dict], test_inputs: set[str], num_sets: int,
                    num_queries: int, seed: int) -> list[QuerySet]:
    """`num_sets` disjoint seeded draws of `num_queries` rows, none whose input is a test input."""
    usable = [row for row in candidates if row["inputs"] not in test_inputs]
    needed = num_sets * num_queries
    if len(usable) < needed:
        raise UserError(f"{num_sets} query sets of {num_queries} need {needed} examples outside the "
                        f"test split, but only {len(usable)} are available")
    order = np.random.default_rng(seed).permutation(len(usable))
    return [QuerySet(i, seed, tuple(usable[j] for j in order[i * num_queries:(i + 1) * num_queries]))
            for i in range(num_sets)]


def target_query_sets(target: str, query_split: str, test_inputs: set[str], num_sets: int,
                      num_queries: int, seed: int) -> list[QuerySet]:
    """The target's query sets: its task family's own when registered, else seeded draws from
    `query_split` (see `draw_query_sets`)."""
    source = corpus.query_source(target)
    if source is None:
        return draw_query_sets(target_rows(target, query_split), test_inputs, num_sets, num_queries, seed)
    return [QuerySet(i, seed, tuple(rows)) for i, rows in enumerate(source(num_sets, num_queries, seed))]


def unseen_by(query_set: QuerySet, examples: Sequence[evaluate.EvalExample]) -> list[evaluate.EvalExample]:
    """The test examples that share no raw example with the query set."""
    seen = {corpus.raw_example_id(row["example_id"]) for row in query_set.rows}
    return [e for e in examples if corpus.raw_example_id(e.example_id) not in seen]


class Pipeline:
    """Holds the upstream model, the indexes and the reranker across targets and query sets."""

    def __init__(self, model_dir: str, model_index_dir: str | None = None,
                 sbert_index_dir: str | None = None, reranker_dir: str | None = None,
                 finetune_config: finetune.FinetuneConfig = finetune.FinetuneConfig(),
                 num_partitions: int = 1, max_input_length: int = 256, max_target_length: int = 64,
                 eval_batch_size: int = 32, length_normalize: bool = False, decode: bool = True):
        self.mesh = partitioning.create_mesh(num_partitions, devices=jax.devices()[:num_partitions])
        self.config, self.params = checkpoints.restore_model(model_dir)
        self.model_dir = model_dir
        self.index_dirs = {"model": model_index_dir, "sbert": sbert_index_dir}
        self.reranker_dir = reranker_dir
        self.finetune_config = finetune_config
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length
        self.eval_batch_size = eval_batch_size
        self.length_normalize = length_normalize
        self.decode = decode
        self._retrievers: dict[str, Any] = {}
        self._reranker = None
        self.vocabulary: Any = None  # the current target's, set by `run` with its examples

    def retriever(self, kind: str):
        """The opened index of `kind` ('model' or 'sbert')."""
        if kind not in self._retrievers:
            if not self.index_dirs.get(kind):
                raise UserError(f"this method needs the {kind!r} index directory (see `recross index build`)")
            self._retrievers[kind] = indexing.Retriever(
                self.index_dirs[kind], kind=kind,
                model_dir=self.model_dir if kind == "model" else None)
        return self._retrievers[kind]

    def reranker(self):
        """The trained cross-encoder."""
        if self._reranker is None:
            from recross_jax.rerank import cross_encoder  # pylint: disable=import-outside-toplevel
            if not self.reranker_dir:
                raise UserError("method 'recross' needs a trained reranker directory (reranker_dir)")
            # Scoring |Q| x µ|R| pairs splits each batch over every device (re-learning uses
            # `self.mesh`, sized for its small batches).
            self._reranker = cross_encoder.load_reranker(self.reranker_dir, mesh=partitioning.create_mesh())
        return self._reranker

    def retrieve(self, method: str, queries: QuerySet, num_retrieved: int, upsample_ratio: float,
                 aggregation: str, exclude_tasks: Sequence[str], seed: int) -> tuple[list[dict], dict]:
        """R for one method and query set, and the seconds spent per stage."""
        times: dict[str, float] = {}
        start = time.perf_counter()
        if method == "random":
            pool = self.retriever("model" if self.index_dirs["model"] else "sbert").rows
            pool = [r for r in pool if not indexing.in_groups(r["task"], tuple(exclude_tasks))]
            chosen = set(baselines.random_retrieval([r["example_id"] for r in pool], num_retrieved, seed))
            rows = [r for r in pool if r["example_id"] in chosen]
        elif method in ("recross", "fs_recross_mix", "fs_recross_2stage") and upsample_ratio > 1:
            candidates = self.retriever("model").retrieve(
                queries.inputs, int(round(num_retrieved * upsample_ratio)), aggregation, exclude_tasks)
            times["retrieve"] = time.perf_counter() - start
            start = time.perf_counter()
            order, utilities = self.reranker().rerank(queries.inputs, [c["inputs"] for c in candidates],
                                                      num_retrieved)
            rows = [{**candidates[i], "utility": float(u)} for i, u in zip(order, utilities)]
            times["rerank"] = time.perf_counter() - start
            return rows, times
        else:
            rows = self.retriever(INDEX_OF_METHOD[method]).retrieve(
                queries.inputs, num_retrieved, aggregation, exclude_tasks)
        times["retrieve"] = time.perf_counter() - start
        return rows, times

    def relearn(self, stages: Sequence[Sequence[dict]]) -> Any:
        """A fresh copy of the upstream params fine-tuned on each stage's rows in turn."""
        params = self.params
        for rows in stages:
            pairs = finetune.tokenize_rows(rows, self.vocabulary, self.max_input_length,
                                           self.max_target_length)
            params, _ = finetune.finetune(self.config, params, pairs, self.finetune_config, mesh=self.mesh)
        return params

    def evaluate(self, params: Any, examples: Sequence[evaluate.EvalExample]) -> tuple[dict, list[dict]]:
        """Rank-classification accuracy (with choices), EM and SoftEM of `params` on `examples`,
        and per example its id, greedy prediction and chosen answer option (where it has them),
        so a run's errors can be read, not only counted."""
        results, predictions, choice_scores = evaluate.evaluate_params(
            self.config, params, examples, self.vocabulary, mesh=self.mesh,
            batch_size=self.eval_batch_size, length_normalize=self.length_normalize,
            decode=self.decode, progress=False)
        outputs = []
        for example, prediction, scores in zip(examples, predictions, choice_scores):
            output: dict[str, Any] = {"example_id": example.example_id}
            if prediction is not None:
                output["prediction"] = prediction
            if scores is not None:
                output["choice"] = example.answer_choices[int(np.argmax(scores))]
            outputs.append(output)
        return results, outputs


def run_path(out_dir: str, target: str, method: str, query_set: int) -> str:
    """Where `run` writes one (target, method, query set) run's JSON."""
    return os.path.join(out_dir, "runs", target, method, f"query_set_{query_set}.json")


def run(targets: Sequence[str], methods: Sequence[str], model_dir: str, out_dir: str, *,
        model_index_dir: str | None = None, sbert_index_dir: str | None = None,
        reranker_dir: str | None = None, num_query_sets: int = 5, num_queries: int = 16,
        num_retrieved: int = 512, upsample_ratio: float = 2.0, aggregation: str = "concat",
        exclude_tasks: Sequence[str] = (), query_split: str = "train", eval_split: str = "test",
        max_eval_examples: int | None = None,
        finetune_config: finetune.FinetuneConfig = finetune.FinetuneConfig(),
        max_input_length: int = 256, max_target_length: int = 64, eval_batch_size: int = 32,
        length_normalize: bool = False, decode: bool = True, num_partitions: int = 1, seed: int = 0,
        progress: bool = True, on_start=None) -> list[dict]:
    """Runs every (target, method, query set) and returns their result records (SPEC §1.7).

    gin binds it in `gin/generalize.gin` (`recross generalize`); `on_start(out_dir)` runs once
    the output directory exists (the CLI writes config.gin there).
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    check_inputs(targets, methods, model_dir, out_dir, model_index_dir=model_index_dir,
                 sbert_index_dir=sbert_index_dir, reranker_dir=reranker_dir,
                 upsample_ratio=upsample_ratio, num_query_sets=num_query_sets,
                 num_queries=num_queries, num_retrieved=num_retrieved, query_split=query_split,
                 eval_split=eval_split)
    os.makedirs(out_dir, exist_ok=True)
    if on_start:
        on_start(out_dir)
    pipeline = Pipeline(model_dir, model_index_dir, sbert_index_dir, reranker_dir, finetune_config,
                        num_partitions, max_input_length, max_target_length, eval_batch_size,
                        length_normalize, decode)
    records = []
    config = {"num_queries": num_queries, "num_retrieved": num_retrieved,
              "upsample_ratio": upsample_ratio, "aggregation": aggregation,
              "exclude_tasks": list(exclude_tasks), "eval_split": eval_split,
              "finetune": dataclasses.asdict(finetune_config), "model_dir": os.path.abspath(model_dir),
              "reranker_sha256": _reranker_sha256(reranker_dir)}
    recorded_config = json.loads(json.dumps(config))  # as a run JSON holds it
    environment = provenance.environment()  # not part of config: another host may resume a study
    # Query sets outermost, so a study stopped early holds every target and method on its first
    # query sets rather than some targets complete and others missing.
    prepared = {}
    for target in targets:
        examples, vocabulary = evaluate.load_examples(
            target, eval_split, max_examples=max_eval_examples, max_input_length=max_input_length,
            max_target_length=max_target_length)
        prepared[target] = examples, vocabulary, target_query_sets(
            target, query_split, {e.inputs for e in examples}, num_query_sets, num_queries, seed)
    base_outputs: dict[tuple[str, ...], tuple] = {}  # by test set: query sets may share one
    with tqdm(total=num_query_sets * len(targets) * len(methods), desc="generalize", unit="run",
              disable=not progress) as bar:
        for index in range(num_query_sets):
            for target in targets:
                examples, pipeline.vocabulary, query_sets = prepared[target]
                query_set = query_sets[index]
                test = unseen_by(query_set, examples)
                for method in methods:
                    path = run_path(out_dir, target, method, query_set.index)
                    if os.path.isfile(path):
                        records.append(_resumed(path, recorded_config, method))
                        bar.update()
                        continue
                    bar.set_postfix_str(f"{target} {method} q{query_set.index}")
                    record = {"target": target, "method": method, "query_set": query_set.index,
                              "seed": seed, "query_ids": [r["example_id"] for r in query_set.rows],
                              "num_test_examples": len(test), "time": {}}
                    if not test:
                        raise UserError(f"every test example of {target} shares a raw example with "
                                        f"query set {query_set.index}")
                    if method == "base":
                        start = time.perf_counter()
                        test_ids = (target, *(e.example_id for e in test))
                        if test_ids not in base_outputs:
                            base_outputs[test_ids] = pipeline.evaluate(pipeline.params, test)
                        metrics, outputs = base_outputs[test_ids]
                        record.update(metrics=metrics, outputs=outputs, retrieved_ids=[], retrieved_tasks=[])
                        record["time"]["evaluate"] = time.perf_counter() - start
                    else:
                        record["run_seed"] = run_seed(seed, target, query_set.index)
                        # The target is unseen by definition: its own examples are never retrieved,
                        # even from a pool that holds them.
                        record.update(_run_method(pipeline, method, query_set, test, num_retrieved,
                                                  upsample_ratio, aggregation, (*exclude_tasks, target),
                                                  record["run_seed"]))
                    record["config"] = config
                    record["environment"] = environment
                    write_json_atomic(path, record)
                    records.append(record)
                    bar.update()
    return records


def check_inputs(targets: Sequence[str], methods: Sequence[str], model_dir: str, out_dir: str, *,
                 model_index_dir: str | None, sbert_index_dir: str | None,
                 reranker_dir: str | None, upsample_ratio: float, num_query_sets: int,
                 num_queries: int, num_retrieved: int, query_split: str, eval_split: str) -> None:
    """`run`'s one validation pass, before its output directory exists: the methods, the
    targets and their splits, the upstream model, and every index and reranker the methods
    need -- each index made by the embedder its method names (the upstream model's own for
    the ReCross methods, MiniLM for `sbert`).

    Raises:
      UserError: the first problem, as one line.
    """
    if isinstance(targets, str) or isinstance(methods, str):
        raise UserError("TARGETS and METHODS must be lists, e.g. ['recross.super_glue_cb']")
    unknown = [m for m in methods if m not in METHODS + FEW_SHOT_METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r} "
                        f"(choose from {', '.join(METHODS + FEW_SHOT_METHODS)})")
    if not targets:
        raise UserError("no targets given")
    if not methods:
        raise UserError("no methods given")
    for name, value in (("num_query_sets", num_query_sets), ("num_queries", num_queries),
                        ("num_retrieved", num_retrieved)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if upsample_ratio < 1:
        raise UserError(f"upsample_ratio must be >= 1, got {upsample_ratio}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"OUT_DIR {out_dir} is a file, not a directory")
    for target in targets:
        for task in corpus.tasks_of(target):
            needed = (eval_split,) if corpus.query_source(target) else (eval_split, query_split)
            for split in needed:
                if split not in task.splits:
                    raise UserError(f"target {target!r} has no split {split!r} (it has: "
                                    f"{', '.join(task.splits)})")
    checkpoints.read_model_config(model_dir)
    kinds = {INDEX_OF_METHOD[m] for m in methods if m in INDEX_OF_METHOD}
    if "random" in methods:  # draws from the pool of the model's index, else of SBERT's
        kinds.add("model" if model_index_dir or not sbert_index_dir else "sbert")
    index_dirs = {"model": model_index_dir, "sbert": sbert_index_dir}
    for kind in sorted(kinds):
        if not index_dirs[kind]:
            user = next((m for m in methods if INDEX_OF_METHOD.get(m) == kind), "random")
            macro = "MODEL_INDEX_DIR" if kind == "model" else "SBERT_INDEX_DIR"
            raise UserError(f"method {user!r} needs the {kind!r} index directory ({macro}; see "
                            "`recross index build`)")
        indexing.check_index(index_dirs[kind], kind, model_dir if kind == "model" else None)
    reranking = [m for m in methods if m in ("recross", "fs_recross_mix", "fs_recross_2stage")]
    if reranking and upsample_ratio > 1:
        if not reranker_dir:
            raise UserError(f"method {reranking[0]!r} with upsample_ratio {upsample_ratio} needs a "
                            "trained reranker directory (RERANKER_DIR; or UPSAMPLE_RATIO=1.0 "
                            "for no reranking)")
        from recross_jax.rerank import cross_encoder  # pylint: disable=import-outside-toplevel
        cross_encoder.check_reranker(reranker_dir)


def _run_method(pipeline: Pipeline, method: str, query_set: QuerySet,
                examples: Sequence[evaluate.EvalExample], num_retrieved: int, upsample_ratio: float,
                aggregation: str, exclude_tasks: Sequence[str], seed: int) -> dict:
    times: dict[str, float] = {}
    retrieved: list[dict] = []
    if method != "fs":
        retrieved, times = pipeline.retrieve(method, query_set, num_retrieved, upsample_ratio,
                                             aggregation, exclude_tasks, seed)
    labeled = list(query_set.rows)
    stages = {"fs": [labeled], "fs_recross_mix": [labeled + retrieved],
              "fs_recross_2stage": [retrieved, labeled]}.get(method, [retrieved])
    start = time.perf_counter()
    params = pipeline.relearn(stages)
    times["relearn"] = time.perf_counter() - start
    start = time.perf_counter()
    metrics, outputs = pipeline.evaluate(params, examples)
    times["evaluate"] = time.perf_counter() - start
    return {"metrics": metrics, "outputs": outputs, "retrieved_ids": [r["example_id"] for r in retrieved],
            "retrieved_tasks": [r["task"] for r in retrieved], "time": times}


def _reranker_sha256(reranker_dir: str | None) -> str | None:
    """The digest of a reranker's record (rewritten whenever it is trained again), so runs of
    another reranker in the same directory are not resumed as this one's."""
    if not reranker_dir:
        return None
    from recross_jax.rerank import cross_encoder  # pylint: disable=import-outside-toplevel
    path = os.path.join(reranker_dir, cross_encoder.RERANKER_FILE)
    return sha256_file(path) if os.path.isfile(path) else None


def _resumed(path: str, config: dict, method: str) -> dict:
    """The finished run at `path`, if it was made with `config`; a run of other settings in the
    same directory would mix into the results unseen, so it is refused. The reranker counts for
    `recross` runs only: the other methods never use it."""
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    recorded = record.get("config", {})
    changed = sorted(key for key in config if recorded.get(key) != config[key]
                     and (key != "reranker_sha256" or method == "recross"))
    if changed:
        raise UserError(f"{path} holds a run made with other settings ({', '.join(changed)}); "
                        "resume with the same settings or choose another OUT_DIR")
    return record
