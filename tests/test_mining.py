"""Mining (Algorithm 1) on a tiny model and a fake BIG-bench pool: parallel = sequential, the
same-task rule, positives/negatives, parity with separate fine-tunes, resume, bad input."""
import dataclasses
import json
import os
import sys
import types

import bigbench_fixtures
import gin
import numpy as np
import pytest
import tiny_models

from recross_jax import corpus, finetune, rerank
from recross_jax.errors import UserError
from recross_jax.rerank import mining
from recross_jax.retrieval import indexing
from tasks import bigbench, vocab

PREFIX = "bbmine"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A rate large enough that groups differ far more than float rounding; no warmup, as the
# groups here take two steps.
FAST = finetune.FinetuneConfig(learning_rate=1e-2, optimizer="adamw", schedule="constant",
                               batch_size=2, epochs=1, clip_grad_norm=1.0)
# |Zq| = 3, |Hq| = 3 (the fixture tasks' validation splits are small), |RZ| = 12 in 4 groups of 3
# (two steps: a full and a half batch), 2 rounds.
# Inputs cut to 16 tokens and targets to 8 keep every batch in one shape (one compilation).
SETTINGS = dict(num_tuples=2, num_queries=3, num_heldout=3, num_candidates=12, num_rounds=2,
                num_groups=4, finetune_config=FAST, max_input_length=16, max_target_length=8,
                eval_batch_size=4, progress=False, aggregation="dedup")
# dedup above: the tiny model's queries retrieve nearly the same examples, so concat's RZ would
# hold too few distinct ones; test_concat_keeps_repeats covers the default.


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mining")
    bigbench.register_bigbench(bigbench_fixtures.write_tasks_dir(str(root)), cap=20, prefix=PREFIX)
    model_dir = str(root / "model")
    config, params = tiny_models.save_tiny_model(model_dir, step=3)
    index_dir = str(root / "index")
    indexing.build(f"{PREFIX}_upstream", index_dir, model_dir=model_dir, max_examples_per_task=20,
                   max_length=64, shard_size=64, backend="exact", progress=False)
    return root, model_dir, index_dir, config, params


@pytest.fixture(scope="module")
def mined(setup):
    """The same two tuples mined with vmapped group fine-tunes and in a Python loop."""
    root, model_dir, index_dir, _, _ = setup
    parallel = mining.mine(model_dir, index_dir, str(root / "parallel.jsonl"), **SETTINGS)
    sequential = mining.mine(model_dir, index_dir, str(root / "sequential.jsonl"), parallel=False,
                             **SETTINGS)
    return parallel, sequential


def test_parallel_and_sequential_mine_the_same_tuples(mined):
    parallel, sequential = mined
    assert len(parallel) == len(sequential) == 2
    for a, b in zip(parallel, sequential):
        for key in ("task", "queries", "positive_ids", "negative_ids", "query_ids", "heldout_ids"):
            assert a[key] == b[key], key
        assert a["candidate_scores"].keys() == b["candidate_scores"].keys()
        np.testing.assert_allclose([a["candidate_scores"][i] for i in a["candidate_scores"]],
                                   [b["candidate_scores"][i] for i in a["candidate_scores"]], rtol=1e-5)
    # Different tuples draw different query sets.
    assert parallel[0]["query_ids"] != parallel[1]["query_ids"]


def test_tuples_follow_algorithm_1(setup, mined):
    _, _, index_dir, _, _ = setup
    rows = {r["example_id"]: r for r in indexing.Retriever(index_dir).rows}
    w = SETTINGS["num_queries"]
    for record in mined[0]:
        task, scores = record["task"], record["candidate_scores"]
        # Zq comes from Tq's pool, Hq from its validation split (held out from M's training);
        # no candidate comes from Tq.
        assert {rows[i]["task"] for i in record["query_ids"]} == {task}
        validation = {e["example_id"] for e in vocab.task_examples(task, "validation")}
        assert len(set(record["heldout_ids"])) == SETTINGS["num_heldout"]
        assert set(record["heldout_ids"]) <= validation and not validation & set(rows)
        assert len(scores) == SETTINGS["num_candidates"]  # dedup: distinct candidates
        assert all(rows[i]["task"] != task for i in scores)
        # W positives (lowest held-out loss first) and W negatives (highest first), disjoint.
        pos, neg = record["positive_ids"], record["negative_ids"]
        assert len(pos) == len(neg) == w and not set(pos) & set(neg)
        ranked = sorted(scores.values())
        assert [scores[i] for i in pos] == ranked[:w]
        assert [scores[i] for i in neg] == ranked[::-1][:w]
        assert record["positives"] == [rows[i]["inputs"] for i in pos]
        assert record["negatives"] == [rows[i]["inputs"] for i in neg]
        assert record["queries"] == [rows[i]["inputs"] for i in record["query_ids"]]
        # Each score is a mean over 2 rounds of 4 group losses: at most 4 * 4 distinct values, and
        # the groups of one round tie, so there are more than one.
        assert 1 < len(set(scores.values())) <= 16
        assert max(scores[i] for i in pos) < min(scores[i] for i in neg)
        # Each round's losses are kept: their mean is the score, and within a round the
        # candidates take at most one value per group.
        rounds = record["round_scores"]
        assert rounds.keys() == scores.keys()
        assert all(len(v) == SETTINGS["num_rounds"] for v in rounds.values())
        np.testing.assert_allclose([np.mean(rounds[i]) for i in scores], list(scores.values()), rtol=1e-12)
        for r in range(SETTINGS["num_rounds"]):
            assert len({v[r] for v in rounds.values()}) <= SETTINGS["num_groups"]


def test_heldout_rows_drop_raw_examples_of_the_train_split(monkeypatch):
    """Hq never holds a prompted variant of an example M was trained on."""
    split = {"train": [{"example_id": "d|train|t1|#1"}, {"example_id": "d|train|t2|#2"}],
             "validation": [{"example_id": "d|train|t3|#1"}, {"example_id": "d|train|t1|#3"}]}
    monkeypatch.setattr(vocab, "task_examples", lambda task, name: split[name])
    assert corpus.held_out_examples("d") == [{"example_id": "d|train|t1|#3"}]


def test_query_sets_without_enough_distinct_candidates_are_drawn_again(setup, tmp_path):
    """Three queries of the tiny model retrieve the same few examples under concat: every draw
    falls short, and mining says so in one line after MAX_DRAWS draws, writing no tuple."""
    _, model_dir, index_dir, _, _ = setup
    settings = {**SETTINGS, "num_tuples": 1}
    del settings["aggregation"]
    out = tmp_path / "short.jsonl"
    with pytest.raises(UserError, match=f"{mining.MAX_DRAWS} query sets in a row retrieved too few "
                       "distinct candidates outside their task"):
        mining.mine(model_dir, index_dir, str(out), **settings)
    assert not out.exists() or out.read_text() == ""


def test_concat_keeps_repeats(setup, tmp_path):
    """The default RZ is the concatenated top lists, repeats included (SPEC §1.4)."""
    _, model_dir, index_dir, _, _ = setup
    settings = {**SETTINGS, "num_tuples": 1, "num_queries": 2}
    del settings["aggregation"]
    record, = mining.mine(model_dir, index_dir, str(tmp_path / "concat.jsonl"), **settings)
    retrieved = indexing.Retriever(index_dir, kind="model", model_dir=model_dir).retrieve(
        record["queries"], SETTINGS["num_candidates"], "concat", [record["task"]])
    ids = [row["example_id"] for row in retrieved]
    assert len(ids) == SETTINGS["num_candidates"] > len(set(ids))  # repeats in RZ
    assert set(record["candidate_scores"]) == set(ids)


def test_group_scores_equal_separate_finetunes(setup):
    """A round's vmapped scores equal `finetune.finetune` + `finetune.example_losses` per group."""
    _, _, _, config, params = setup  # dropout 0.1: the copies must draw the masks they would alone
    rng = np.random.default_rng(0)

    def pair():  # the shapes of the mining runs above: inputs pad to 16 ids, targets to 8
        return ([int(x) for x in rng.integers(3, 120, rng.integers(8, 16))] + [1],
                [int(x) for x in rng.integers(3, 120, rng.integers(1, 7))] + [1])

    pairs = [pair() for _ in range(12)]
    heldout = [pair() for _ in range(5)]
    plan = mining.plan_rounds(len(pairs), 4, 1, np.random.default_rng(5))[0]
    assert sorted(i for g in plan for i in g.members) == list(range(12))
    finetuner = mining.GroupFinetuner(config, params, FAST, parallel=True, eval_batch_size=4)
    # Groups of equal size, then of unequal size (3, 3, 2, 2 examples: 2, 2, 1, 1 steps), where
    # the shorter copies' masked extra step must change nothing.
    uneven = [pairs[:3], pairs[3:6], pairs[6:8], pairs[8:10]]
    for groups in ([[pairs[i] for i in g.members] for g in plan], uneven):
        seeds = [g.seed for g in plan]
        losses = finetuner.heldout_losses(groups, seeds, heldout)
        for group, seed, loss in zip(groups, seeds, losses):
            tuned, _ = finetune.finetune(config, params, group, dataclasses.replace(FAST, seed=seed))
            expected = finetune.example_losses(config, tuned, heldout, batch_size=4).mean()
            assert loss == pytest.approx(float(expected), abs=1e-5)
        assert np.ptp(losses) > 1e-3  # the groups really differ
    # Without dropout a one-example group's loss is the same whatever its seed; with it, not.
    for dropout, same in ((False, True), (True, False)):
        finetuner = mining.GroupFinetuner(config, params, FAST, parallel=True, eval_batch_size=4,
                                          dropout=dropout)
        losses = finetuner.heldout_losses([pairs[:1], pairs[:1]], [1, 2], heldout)
        assert (abs(losses[0] - losses[1]) < 1e-6) == same, (dropout, losses)


def test_resume_after_kill_equals_uninterrupted_run(setup, mined, monkeypatch):
    root, model_dir, index_dir, _, _ = setup
    out = root / "resumed.jsonl"
    calls = []
    original = mining.GroupFinetuner.heldout_losses

    def dying(self, *args, **kwargs):
        if len(calls) == SETTINGS["num_rounds"] + 1:  # in the second round of the second tuple
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mining.GroupFinetuner, "heldout_losses", dying)
    with pytest.raises(KeyboardInterrupt):
        mining.mine(model_dir, index_dir, str(out), **SETTINGS)
    assert len(out.read_text().splitlines()) == 1
    with open(out, "a", encoding="utf-8") as f:  # a line cut short by the kill
        f.write('{"index": 1, "task": "bbmi')
    monkeypatch.setattr(mining.GroupFinetuner, "heldout_losses", original)
    resumed = mining.mine(model_dir, index_dir, str(out), **SETTINGS)
    assert resumed == mined[0]
    assert [json.loads(line) for line in out.read_text().splitlines()] == mined[0]
    # Everything is there: nothing more to mine.
    assert mining.mine(model_dir, index_dir, str(out), **SETTINGS) == mined[0]


def test_reranker_chooses_the_candidates(setup, monkeypatch):
    """A further iteration: RZ is the reranker's top |RZ| of mu * |RZ| retrieved examples."""
    root, model_dir, index_dir, _, _ = setup
    seen = []

    class Reversing:  # prefers the candidates retrieval ranks last
        def rerank(self, queries, candidates, top_n):
            seen.append(candidates)
            return np.arange(len(candidates))[::-1][:top_n], np.zeros(top_n)

    fake = types.ModuleType("recross_jax.rerank.cross_encoder")
    fake.load_reranker = lambda path: Reversing()
    fake.check_reranker = lambda path: {}
    # `from recross_jax.rerank import cross_encoder` reads the package attribute when the real
    # module was imported before, else sys.modules.
    monkeypatch.setitem(sys.modules, "recross_jax.rerank.cross_encoder", fake)
    monkeypatch.setattr(rerank, "cross_encoder", fake, raising=False)
    settings = {**SETTINGS, "num_tuples": 1}
    record = mining.mine(model_dir, index_dir, str(root / "reranked.jsonl"),
                         reranker_dir="unused", upsample_ratio=1.5, **settings)[0]
    assert len(seen) == 1 and len(seen[0]) == 18
    rows = {r["example_id"]: r for r in indexing.Retriever(index_dir).rows}
    chosen = {rows[i]["inputs"] for i in record["candidate_scores"]}
    assert chosen == set(seen[0][-12:])


def test_bad_input_is_a_user_error_and_writes_nothing(setup, tmp_path):
    root, model_dir, index_dir, _, _ = setup
    out = tmp_path / "run" / "tuples.jsonl"
    cases = [
        (dict(model_dir=str(root / "no_model")), "no_model"),
        (dict(index_dir=str(root / "no_index")), "index directory not found"),
        (dict(num_heldout=500), "no upstream task in the index has the 500 held-out rows"),
        (dict(num_candidates=5), r"num_candidates=5 must be at least 2 \* num_queries"),
        (dict(num_rounds=0), "positive"),
    ]
    for override, message in cases:
        kwargs = {"model_dir": model_dir, "index_dir": index_dir, "out": str(out), **SETTINGS,
                  **override}
        with pytest.raises(UserError, match=message):
            mining.mine(**kwargs)
        assert not out.parent.exists()
    # Resuming a file mined with other settings leaves it as it was.
    mined_file = root / "parallel.jsonl"
    before = mined_file.read_text()
    with pytest.raises(UserError, match="parallel.jsonl:1: written by another mining configuration"):
        mining.mine(model_dir, index_dir, str(mined_file), **{**SETTINGS, "seed": 1})
    assert mined_file.read_text() == before
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json}\n")
    with pytest.raises(UserError, match="broken.jsonl:1: not valid JSON"):
        mining.mine(model_dir, index_dir, str(broken), **SETTINGS)


def test_cli_writes_tuples_and_config(setup, mined, capsys, monkeypatch):
    root, model_dir, index_dir, _, _ = setup
    monkeypatch.chdir(REPO)
    out = root / "cli" / "tuples.jsonl"
    flags = ["--gin_file=gin/runs/mine.gin", f"--gin.MODEL_DIR='{model_dir}'",
             f"--gin.INDEX_DIR='{index_dir}'", f"--gin.OUT='{out}'", "--gin.NUM_TUPLES=1",
             "--gin.group/finetune.FinetuneConfig.learning_rate=1e-2",
             "--gin.group/finetune.FinetuneConfig.warmup_steps=0",
             "--gin.group/finetune.FinetuneConfig.schedule='constant'",
             "--gin.group/finetune.FinetuneConfig.clip_grad_norm=1.0"]
    flags += [f"--gin.mining.mine.{k}={v!r}" for k, v in SETTINGS.items()
              if k not in ("num_tuples", "finetune_config")]
    try:
        assert mining.main(flags) == 0
        assert "1 tuples" in capsys.readouterr().out
        assert [json.loads(line) for line in out.read_text().splitlines()] == mined[0][:1]
        assert "mining.mine.num_candidates = 12" in (root / "cli" / "config.gin").read_text()
        assert mining.main(["--gin_file=gin/runs/mine.gin", f"--gin.MODEL_DIR='{model_dir}'"]) == 2
        err = capsys.readouterr().err
        assert "missing required gin binding" in err and len(err.strip().splitlines()) == 1
    finally:
        gin.clear_config()  # the parsed mine.gin stays out of later tests
