"""Mining distant supervision for the reranker: SPEC §1.4, Algorithm 1.

For tuple i (its randomness drawn from a seed derived from (seed, i), so a resumed run writes
exactly the tuples an uninterrupted one would):

1. draw an upstream task Tq among those with at least |Zq| pool rows and |Hq| held-out rows,
   then a query set Zq from Tq's pool rows and a held-out set Hq from its `validation` split,
   less every example that shares a raw example with Tq's `train` split (on which M was
   trained: the ReCross release's upstream and validation files share raw examples), as the
   authors take Hq from the upstream task's held-out data; when the queries retrieve fewer
   distinct candidates than step 4 needs (2 |Zq|), draw again from the same generator (at most
   `MAX_DRAWS` times);
2. retrieve the candidates RZ for Zq from the model index, discarding every candidate of Tq
   (and of its subtasks); RZ is the top `num_candidates` of the aggregation `aggregation`. The
   default is `concat` (SPEC §1.4 and the authors' code): the concatenated top lists keep
   repeats, a repeated example is fine-tuned on once per occurrence and its score is the mean
   over its occurrences; `dedup` keeps distinct examples only;
3. for each round: shuffle RZ and split it into `num_groups` groups (sizes differ by at most one
   when they do not divide evenly); fine-tune a copy of M on each group and give every example
   of the group that copy's mean per-example loss on Hq;
4. score = mean over rounds; sort ascending (lower held-out loss = more helpful, ties in RZ
   order); the positives Zp are the best |Zq| (best first), the negatives Zn the worst |Zq|
   (worst first).

One JSON line per tuple is appended to the output file (flushed and fsynced):
`{"index", "task", "queries", "positives", "negatives", "query_ids", "positive_ids",
"negative_ids", "heldout_ids", "candidate_scores": {id: score}, "round_scores": {id: [score per
round]}, "seed", "config_hash"}`; `cross_encoder.train_reranker` reads `queries`, `positives`
and `negatives`, and `reliability` measures from the rounds how reliable the scores are.

The group fine-tunes of a round run at once (`parallel=True`): the copies' train states are
stacked on a leading axis, the pure train step of `training.make_train_step` is `jax.vmap`ped
over (stacked states, stacked batches [n, B, L]) and jitted, the stacked axis sharded over
the mesh's `data` axis (over the most devices that divide n evenly), followed by a vmapped
held-out loss. `parallel=False` runs the same program one copy at a time in a Python loop
(the original design); both give the same scores up to float rounding.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from recross_jax import checkpoints, corpus, finetune, gin_utils, io_utils, models, partitioning, training
from recross_jax.errors import UserError
from recross_jax.models import ModelConfig
from recross_jax.retrieval import indexing

TokenPair = finetune.TokenPair

# Query sets drawn for one tuple before mining gives up: with `concat`, queries that retrieve the
# same examples can leave RZ with fewer distinct candidates than the positives and negatives need.
MAX_DRAWS = 10

# SPEC §1.4's group fine-tune: 1 epoch, batch 2, AdamW at 3e-5 with 3 warmup steps, clip 0.1.
# After the warmup the rate decays linearly to 0 (HF's get_linear_schedule_with_warmup, the usual
# companion of a warmup; the SPEC names none): schedule='constant' keeps it flat instead.
GROUP_FINETUNE = finetune.FinetuneConfig(learning_rate=3e-5, optimizer="adamw", schedule="linear",
                                         warmup_steps=3, batch_size=2, epochs=1, clip_grad_norm=0.1)


@dataclasses.dataclass(frozen=True)
class Group:
    """One group fine-tune of a round: positions in RZ, and the seed of its batch order and dropout."""

    members: tuple[int, ...]
    seed: int


def plan_rounds(num_candidates: int, num_groups: int, num_rounds: int,
                rng: np.random.Generator) -> list[list[Group]]:
    """Each round's shuffle of RZ split into `num_groups` groups, with a seed per group."""
    plans = []
    for _ in range(num_rounds):
        order = rng.permutation(num_candidates)
        seeds = rng.integers(0, 2**31 - 1, size=num_groups)
        plans.append([Group(tuple(int(i) for i in members), int(s))
                      for members, s in zip(np.array_split(order, num_groups), seeds)])
    return plans


class GroupFinetuner:
    """Fine-tunes copies of the upstream params on groups of examples and returns each copy's
    mean per-example loss on a held-out set; the copies of a round run in one vmapped program
    (`parallel=True`) or one after another (`parallel=False`)."""

    def __init__(self, config: ModelConfig, params: Any,
                 finetune_config: finetune.FinetuneConfig = GROUP_FINETUNE,
                 parallel: bool = True, num_partitions: int = 1, eval_batch_size: int = 50,
                 dropout: bool = True):
        if eval_batch_size < 1:
            raise UserError(f"eval_batch_size must be positive, got {eval_batch_size}")
        # Without dropout a group's held-out loss depends on its members and batch order only.
        self.config = config if dropout else models.without_dropout(config)
        self.params = params
        self.finetune_config = finetune_config
        self.parallel = parallel
        self.num_partitions = num_partitions
        self.eval_batch_size = eval_batch_size
        self._placed: dict[Any, Any] = {}  # the params on each program's mesh

    def heldout_losses(self, groups: Sequence[Sequence[TokenPair]], seeds: Sequence[int],
                       heldout: Sequence[TokenPair],
                       shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """Mean held-out loss [len(groups)] of a copy fine-tuned on each group.

        Args:
          groups: the examples of each group fine-tune.
          seeds: per group, the seed of its batch order and dropout (as `FinetuneConfig.seed`).
          heldout: the held-out examples Hq.
          shape: (rows, input length, target length) of every training batch; by default the
            padded shape of all the groups' examples (one compiled shape per round).
        """
        if not groups or any(not g for g in groups) or not heldout:
            raise UserError("group fine-tunes need non-empty groups and held-out examples")
        cfg = self.finetune_config
        shape = shape or finetune.padded_shape([p for g in groups for p in g], cfg.batch_size, None)
        # One schedule for every copy (vmapped copies share the optimizer): that of the longest
        # group; groups of equal size, the default, get exactly their own.
        total_steps = max(finetune.num_steps(len(g), cfg.batch_size, cfg.epochs) for g in groups)
        eval_rows = min(self.eval_batch_size, len(heldout))
        # Sorted by length, each batch padded to its own shape (the sum over examples is the
        # same): 22% fewer FLOPs than one shape for all on the mining bench's 24-100 tokens.
        eval_batches = [b for _, b in finetune.length_sorted_batches(heldout, eval_rows)]
        if self.parallel:
            return self._run(groups, seeds, eval_batches, len(heldout), shape, total_steps)
        return np.concatenate([self._run([g], [s], eval_batches, len(heldout), shape, total_steps)
                               for g, s in zip(groups, seeds)])

    def _run(self, groups: Sequence[Sequence[TokenPair]], seeds: Sequence[int],
             eval_batches: list[dict], num_heldout: int, shape: tuple[int, int, int],
             total_steps: int) -> np.ndarray:
        cfg = self.finetune_config
        programs = _stacked_programs(self.config, cfg, total_steps, len(groups), self.num_partitions)
        if programs.mesh not in self._placed:
            self._placed[programs.mesh] = programs.place(self.params)
        per_group = [list(finetune.epoch_batches(g, cfg.batch_size, cfg.epochs, s, shape))
                     for g, s in zip(groups, seeds)]
        states = programs.init(self._placed[programs.mesh], np.asarray(seeds, np.int32))
        step_losses = []
        for t in range(total_steps):
            # A group with fewer steps repeats its first batch; the mask discards those updates.
            active = np.array([t < len(b) for b in per_group])
            batch = {k: np.stack([b[t if t < len(b) else 0][k] for b in per_group])
                     for k in per_group[0][0]}
            states, losses = programs.step(states, batch, active)
            step_losses.append((losses, active))
        totals = sum(np.asarray(programs.heldout(states.params, b)).sum(axis=1) for b in eval_batches)
        self._check_finite(step_losses, totals)
        return totals / num_heldout

    @staticmethod
    def _check_finite(step_losses: list, heldout_totals: np.ndarray) -> None:
        for step, (losses, active) in enumerate(step_losses, 1):
            losses = np.asarray(losses)[active]
            if not np.isfinite(losses).all():
                raise training.NonFiniteLossError(
                    f"non-finite loss at step {step} of a group fine-tune ({losses.tolist()}); "
                    "lower the group fine-tune learning rate")
        if not np.isfinite(heldout_totals).all():
            raise training.NonFiniteLossError("non-finite held-out loss after a group fine-tune")


@functools.lru_cache(maxsize=16)
def _stacked_programs(config: ModelConfig, cfg: finetune.FinetuneConfig, total_steps: int, n: int,
                      num_partitions: int) -> _StackedPrograms:
    """Compiled once per process for each network, fine-tune, length and width."""
    return _StackedPrograms(config, cfg.make_optimizer(total_steps), n, num_partitions)


class _StackedPrograms:
    """The jitted programs of n stacked copies: init from M, a vmapped train step (masked when
    some copy sits a step out) and a vmapped per-example loss; the stacked axis is sharded over
    the mesh's `data` axis."""

    def __init__(self, config: ModelConfig, optimizer, n: int, num_partitions: int):
        model = models.build(config)
        width = max(1, len(jax.devices()) // num_partitions)
        data = max(d for d in range(1, min(n, width) + 1) if n % d == 0)
        self.mesh = partitioning.create_mesh(num_partitions,
                                             devices=jax.devices()[:data * num_partitions])
        # Inside a copy the batch is not split: `data` carries the stacked copies instead.
        self.rules = partitioning.logical_axis_rules([("batch", None)])
        single = training.state_shardings(training.abstract_params(config), optimizer, self.mesh,
                                          self.rules)
        stacked = jax.tree.map(lambda s: NamedSharding(self.mesh, PartitionSpec("data", *s.spec)),
                               single)
        rows = NamedSharding(self.mesh, PartitionSpec("data"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        step_fn = training.make_train_step(model, optimizer, z_loss=0.0, jit=False)

        def init(params: Any, seeds: jax.Array) -> training.TrainState:
            # Every copy starts as `TrainState.create(params, optimizer, seed)` would.
            return jax.vmap(lambda seed: training.TrainState.create(params, optimizer).replace(
                rng=jax.random.PRNGKey(seed)))(seeds)

        def step(states: training.TrainState, batch: dict):
            new, metrics = jax.vmap(step_fn, spmd_axis_name="data")(states, batch)
            return new, metrics["loss"]

        def masked_step(states: training.TrainState, batch: dict, active: jax.Array):
            new, losses = step(states, batch)

            def keep(a: jax.Array, b: jax.Array) -> jax.Array:
                return jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 1)), a, b)
            return jax.tree.map(keep, new, states), losses

        def heldout(params: Any, batch: dict) -> jax.Array:
            return jax.vmap(lambda p: finetune.per_example_loss(model, p, batch),
                            spmd_axis_name="data")(params)

        self._param_shardings = single.params
        self._init = jax.jit(init, in_shardings=(single.params, rows), out_shardings=stacked)
        # Selecting between the old and new states makes XLA copy every donated state buffer
        # (the optimizer moments too) each step: a third of a vmapped T5-mini step on CPU. So
        # the mask is applied only when some copy sits a step out (groups of unequal size).
        self._step = jax.jit(step, in_shardings=(stacked, rows), out_shardings=(stacked, rows),
                             donate_argnums=0)
        self._masked_step = jax.jit(masked_step, in_shardings=(stacked, rows, rows),
                                    out_shardings=(stacked, rows), donate_argnums=0)
        self._heldout = jax.jit(heldout, in_shardings=(stacked.params, replicated),
                                out_shardings=rows)
        self._rows, self._replicated = rows, replicated

    def place(self, params: Any) -> Any:
        """`params` on this mesh (replicated over `data`, split over `model` by the rules)."""
        return jax.device_put(params, self._param_shardings)

    def init(self, params: Any, seeds: np.ndarray) -> training.TrainState:
        with partitioning.activate(self.mesh, self.rules):
            return self._init(params, jax.device_put(seeds, self._rows))

    def step(self, states: training.TrainState, batch: dict, active: np.ndarray):
        """One train step of every copy; copies where `active` is False keep their state."""
        with partitioning.activate(self.mesh, self.rules):
            batch = jax.device_put(batch, self._rows)
            if active.all():
                return self._step(states, batch)
            return self._masked_step(states, batch, jax.device_put(active, self._rows))

    def heldout(self, params: Any, batch: dict) -> jax.Array:
        with partitioning.activate(self.mesh, self.rules):
            return self._heldout(params, jax.device_put(batch, self._replicated))


def score_candidates(finetuner: GroupFinetuner, pairs: Sequence[TokenPair],
                     heldout: Sequence[TokenPair], plans: Sequence[Sequence[Group]],
                     on_round: Callable[[], None] | None = None) -> np.ndarray:
    """Algorithm 1, step 3: each candidate's held-out loss in each round [rounds, candidates]
    (step 4 averages them over the rounds)."""
    shape = finetune.padded_shape(pairs, finetuner.finetune_config.batch_size, None)
    scores = np.zeros((len(plans), len(pairs)))
    for number, plan in enumerate(plans):
        losses = finetuner.heldout_losses([[pairs[i] for i in g.members] for g in plan],
                                          [g.seed for g in plan], heldout, shape)
        for group, loss in zip(plan, losses):
            scores[number, list(group.members)] = loss
        if on_round is not None:
            on_round()
    return scores


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything that determines the tuples besides the model and the index."""

    num_queries: int
    num_heldout: int
    num_candidates: int
    num_rounds: int
    num_groups: int
    aggregation: str
    finetune_config: dict
    reranker: bool
    upsample_ratio: float
    max_input_length: int
    max_target_length: int
    seed: int
    group_dropout: bool = True

    def hash(self) -> str:
        values = dataclasses.asdict(self)
        if values["group_dropout"]:  # added later: the default hashes as before, so older tuples resume
            del values["group_dropout"]
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Miner:
    """The opened model, index and group fine-tuner; `tuple(i)` mines tuple i."""

    def __init__(self, model_dir: str, index_dir: str, settings: _Settings,
                 finetune_config: finetune.FinetuneConfig, parallel: bool, num_partitions: int,
                 eval_batch_size: int, reranker_dir: str | None):
        self.settings = settings
        config, params = checkpoints.restore_model(model_dir)
        # Algorithm 1 retrieves with the upstream model's own index.
        self.retriever = indexing.Retriever(index_dir, kind="model", model_dir=model_dir)
        self.vocabulary = _vocabulary(self.retriever)
        self.rows_of_task: dict[str, list[dict]] = collections.defaultdict(list)
        for row in self.retriever.rows:
            self.rows_of_task[row["task"]].append(row)
        self.heldout_of_task = {task: corpus.held_out_examples(task) for task in sorted(self.rows_of_task)}
        self.tasks = self._eligible_tasks()
        self.reranker = None
        if reranker_dir:
            from recross_jax.rerank import cross_encoder  # pylint: disable=import-outside-toplevel
            self.reranker = cross_encoder.load_reranker(reranker_dir)
        self.finetuner = GroupFinetuner(config, params, finetune_config, parallel, num_partitions,
                                        eval_batch_size, settings.group_dropout)

    def _eligible_tasks(self) -> list[str]:
        s = self.settings
        total = len(self.retriever.rows)
        tasks = sorted(t for t, rows in self.rows_of_task.items()
                       if len(rows) >= s.num_queries and len(self.heldout_of_task[t]) >= s.num_heldout
                       and total - len(rows) >= 2 * s.num_queries)
        if not tasks:
            largest = max(self.heldout_of_task, key=lambda t: len(self.heldout_of_task[t]))
            raise UserError(f"no upstream task in the index has the {s.num_heldout} held-out rows "
                            f"and {s.num_queries} pool rows a tuple needs (the most held-out rows: "
                            f"{largest}, {len(self.heldout_of_task[largest])} validation examples "
                            "unseen in its train split); lower num_queries or num_heldout")
        return tasks

    def tuple(self, index: int, on_round: Callable[[], None] | None = None) -> dict:
        """Tuple `index`: (Zq, Zp, Zn) of one sampled upstream task, with all candidate scores."""
        s = self.settings
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, index]))
        for _ in range(MAX_DRAWS):
            task = self.tasks[int(rng.integers(len(self.tasks)))]
            rows = self.rows_of_task[task]
            queries = [rows[i] for i in rng.permutation(len(rows))[:s.num_queries]]
            unseen = self.heldout_of_task[task]
            heldout = [unseen[i] for i in rng.permutation(len(unseen))[:s.num_heldout]]
            candidates, distinct = self._candidates(task, [q["inputs"] for q in queries])
            if distinct >= 2 * s.num_queries and len(candidates) >= s.num_groups:
                break
        else:
            raise UserError(f"{MAX_DRAWS} query sets in a row retrieved too few distinct "
                            f"candidates outside their task (the last, of {task}: {distinct}); a "
                            f"tuple needs {2 * s.num_queries} (positives and negatives) and at "
                            f"least {s.num_groups} (one per group): raise num_candidates or use "
                            "aggregation='dedup'")
        pairs = finetune.tokenize_rows(candidates, self.vocabulary, s.max_input_length,
                                       s.max_target_length)
        heldout_pairs = finetune.tokenize_rows(heldout, self.vocabulary, s.max_input_length,
                                               s.max_target_length)
        plans = plan_rounds(len(candidates), s.num_groups, s.num_rounds, rng)
        scores = score_candidates(self.finetuner, pairs, heldout_pairs, plans, on_round)
        by_id: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        for row, column in zip(candidates, scores.T):
            by_id[row["example_id"]].append(column)
        # A repeated candidate's loss in a round: the mean over its occurrences.
        round_scores = {i: np.mean(v, axis=0).tolist() for i, v in by_id.items()}
        candidate_scores = {i: float(np.mean(v)) for i, v in round_scores.items()}
        # Stable sort: ties keep RZ order (a group's members always tie).
        ranked = sorted(candidate_scores, key=candidate_scores.__getitem__)
        positives = ranked[:s.num_queries]
        negatives = ranked[::-1][:s.num_queries]
        text = {row["example_id"]: row["inputs"] for row in candidates}
        return {"index": index, "task": task,
                "queries": [q["inputs"] for q in queries],
                "positives": [text[i] for i in positives],
                "negatives": [text[i] for i in negatives],
                "query_ids": [q["example_id"] for q in queries],
                "positive_ids": positives, "negative_ids": negatives,
                "heldout_ids": [h["example_id"] for h in heldout],
                "candidate_scores": candidate_scores, "round_scores": round_scores,
                "seed": s.seed, "config_hash": s.hash()}

    def _candidates(self, task: str, queries: list[str]) -> tuple[list[dict], int]:
        """RZ: the top candidates of the queries outside `task` (reranked when a reranker is
        given), and how many distinct examples it holds."""
        s = self.settings
        if self.reranker is None:
            candidates = self.retriever.retrieve(queries, s.num_candidates, s.aggregation, [task])
        else:
            pool = self.retriever.retrieve(queries, int(round(s.upsample_ratio * s.num_candidates)),
                                           s.aggregation, [task])
            order, _ = self.reranker.rerank(queries, [c["inputs"] for c in pool], s.num_candidates)
            candidates = [pool[int(i)] for i in order]
        # The index search already drops them; a tuple must never rest on that alone.
        if any(indexing.in_groups(c["task"], (task,)) for c in candidates):
            raise AssertionError(f"retrieval returned candidates of the query task {task}")
        return candidates, len({c["example_id"] for c in candidates})


def mine(model_dir: str, index_dir: str, out: str, num_tuples: int, *,
         num_queries: int = 16, num_heldout: int = 100, num_candidates: int = 100,
         num_rounds: int = 3, num_groups: int = 5, aggregation: str = "concat",
         finetune_config: finetune.FinetuneConfig = GROUP_FINETUNE, parallel: bool = True,
         reranker_dir: str | None = None, upsample_ratio: float = 2.0,
         max_input_length: int = 256, max_target_length: int = 64, eval_batch_size: int = 50,
         num_partitions: int = 1, seed: int = 0, group_dropout: bool = True, progress: bool = True,
         on_start: Callable[[str], object] | None = None) -> list[dict]:
    """Mines `num_tuples` tuples into the JSONL file `out`, resuming the tuples already there.

    gin binds it in `gin/runs/mine.gin` (`recross mine`). Arguments are SPEC §1.4's (defaults in
    brackets there): |Zq| `num_queries`, |Hq| `num_heldout`, |RZ| `num_candidates`, the rounds
    and groups, the group fine-tune `finetune_config` (its `seed` is replaced per group). With
    `reranker_dir` (a further iteration), `upsample_ratio * num_candidates` examples are
    retrieved and the trained reranker keeps the top `num_candidates` as RZ. `group_dropout=False`
    fine-tunes the groups without dropout, so a group's held-out loss depends on its members and
    batch order alone (less noise in the labels; see `reliability`). `on_start(dir)` runs once
    the inputs are validated and the output directory exists (the CLI writes config.gin there).

    Returns:
      All the tuples of `out` (resumed and new), in order.
    """
    if num_tuples < 0 or min(num_queries, num_heldout, num_candidates, num_rounds, num_groups) < 1:
        raise UserError("num_tuples must be >= 0 and num_queries, num_heldout, num_candidates, "
                        "num_rounds and num_groups positive")
    if num_candidates < max(2 * num_queries, num_groups):
        raise UserError(f"num_candidates={num_candidates} must be at least 2 * num_queries "
                        f"({2 * num_queries}: disjoint positives and negatives) and num_groups "
                        f"({num_groups})")
    if reranker_dir and upsample_ratio < 1:
        raise UserError(f"upsample_ratio must be >= 1, got {upsample_ratio}")
    settings = _Settings(num_queries, num_heldout, num_candidates, num_rounds, num_groups,
                         aggregation, _config_dict(finetune_config), bool(reranker_dir),
                         float(upsample_ratio) if reranker_dir else 1.0, max_input_length,
                         max_target_length, seed, group_dropout)
    if os.path.isdir(out):
        raise UserError(f"OUT {out} is a directory; give the tuples file's path")
    indexing.check_index(index_dir, "model", model_dir)
    if reranker_dir:
        from recross_jax.rerank import cross_encoder  # pylint: disable=import-outside-toplevel
        cross_encoder.check_reranker(reranker_dir)
    done = read_tuples(out, settings) if os.path.exists(out) else []
    miner = _Miner(model_dir, index_dir, settings, finetune_config, parallel, num_partitions,
                   eval_batch_size, reranker_dir)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(out):
        _drop_partial_line(out)
    if on_start is not None:
        on_start(directory)
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    with (tqdm(total=num_tuples, initial=min(len(done), num_tuples), desc="mine", unit="tuple",
               disable=not progress) as bar,
          tqdm(total=num_rounds, desc="rounds", leave=False, disable=not progress) as rounds,
          open(out, "a", encoding="utf-8") as f):
        for index in range(len(done), num_tuples):
            rounds.reset()
            record = miner.tuple(index, on_round=lambda: rounds.update(1))
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done.append(record)
            bar.update(1)
    return done


def read_tuples(path: str, settings: _Settings | None = None) -> list[dict]:
    """The complete tuples of a mining output (a partially written last line, left by a killed
    run, is ignored). With `settings`, every tuple must come from them, in order."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1].decode("utf-8")
    except OSError as e:
        raise UserError(f"cannot read tuples file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"tuples file {path} is not UTF-8 text: {e.reason}") from None
    tuples = []
    for number, record in io_utils.parse_jsonl_lines(complete.splitlines(), path):
        if settings is not None and (record.get("index") != number - 1
                                     or record.get("config_hash") != settings.hash()):
            raise UserError(f"{path}:{number}: written by another mining configuration or seed "
                            f"(config_hash {record.get('config_hash')} vs {settings.hash()}); "
                            "choose another output file")
        tuples.append(record)
    return tuples


def _drop_partial_line(path: str) -> None:
    """Cuts a partially written last line off `path`, so appending starts on a fresh line."""
    with open(path, "r+b") as f:
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _vocabulary(retriever) -> Any:
    """The vocabulary of the indexed mixture's tasks (the upstream model's)."""
    from recross_jax import corpus  # pylint: disable=import-outside-toplevel
    if retriever.vocabulary is not None:  # recorded by the index
        return retriever.vocabulary
    mixture = retriever.index.embedder.get("mixture")
    if not mixture:
        raise UserError("the index manifest names no mixture, so its vocabulary is unknown; "
                        "rebuild it with `recross index build`")
    return corpus.tasks_of(mixture)[0].output_features["inputs"].vocabulary


def _config_dict(cfg: finetune.FinetuneConfig) -> dict:
    values = dataclasses.asdict(cfg)
    values.pop("seed")  # replaced by each group's own seed
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """`recross mine --gin_file=gin/runs/mine.gin --gin.MODEL_DIR=... --gin.INDEX_DIR=...
    --gin.OUT=... --gin.NUM_TUPLES=...`; returns the exit code (2 on a user error)."""
    parser = argparse.ArgumentParser(
        prog="recross mine", description="Mine (query, positive, negative) tuples for the reranker "
        "(ReCross Algorithm 1); re-running the command resumes the output file.",
        epilog="example: recross mine --gin_file=gin/runs/mine.gin --gin.MODEL_DIR=\\\"runs/upstream\\\" "
               "--gin.INDEX_DIR=\\\"runs/index_model\\\" --gin.OUT=\\\"runs/mining/tuples.jsonl\\\"")
    parser.add_argument("--tasks_module", action="append", default=None,
                        help="module registering tasks (repeatable; default: those the gin file imports)")
    gin_utils.add_gin_flags(parser)
    try:
        args = parser.parse_args(argv)
        for name in args.tasks_module or ():
            _import_module(name)
        gin_utils.parse_gin_flags(args)
        tuples = gin_utils.call_configurable(mine, on_start=gin_utils.write_config)
    except UserError as e:
        print(f"recross mine: error: {gin_utils.first_line(e)}", file=sys.stderr)
        return 2
    print(f"{len(tuples)} tuples")
    return 0


def _import_module(name: str) -> None:
    import importlib  # pylint: disable=import-outside-toplevel
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise UserError(f"cannot import tasks module {name!r}: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
