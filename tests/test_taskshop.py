"""TaskShop: the embedded TaskWeb numbers, ranking metrics, the TaskShop formula, Table 2 of the
paper reproduced from the authors' RoE scores, estimators (pluggable, model embeddings) and the
`recross taskshop` command."""
import json
import os
import re

import numpy as np
import pytest
import shared_data

from recross_jax import cli
from recross_jax.errors import UserError
from recross_jax.selection import estimators, ranking, taskshop, taskshop_cli, taskweb

# Table 2 of Kim et al. (2023): (NDCG, Regret@5) per category and the mean over the 20 targets.
PUBLISHED = {
    "roe": {"NLI/Entailment": (66.53, 4.79), "Paraphrase": (49.19, 1.38), "Commonsense": (65.70, 6.83),
            "Sentiment": (78.21, 0.14), "QA": (84.46, 4.26), "Semantics": (54.33, 1.84),
            "all": (64.52, 4.11)},
    "taskshop": {"NLI/Entailment": (75.14, 3.51), "Paraphrase": (49.29, 1.35),
                 "Commonsense": (79.49, 3.76), "Sentiment": (80.53, 0.04), "QA": (85.74, 2.22),
                 "Semantics": (54.22, 1.67), "all": (71.54, 2.66)},
}
HAVE_SHARED = os.path.isdir(shared_data.TASKWEB_TASKS)
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason="../shared/data/taskweb not present")


def rounded(result):
    rows = dict(result["per_category"], all=result["mean"])
    return {c: (round(100 * r["ndcg"], 2), round(100 * r["regret@5"], 2)) for c, r in rows.items()}


def test_table2_reproduced_from_the_authors_scores():
    roe = taskweb.roe()
    assert rounded(taskshop.evaluate_taskweb(roe)) == PUBLISHED["roe"]
    ts = taskshop.taskshop_table(roe, taskweb.transfer(), targets=taskweb.EVAL_TARGETS, lam=0.7)
    result = taskshop.evaluate_taskweb(ts)
    assert rounded(result) == PUBLISHED["taskshop"]
    assert result["mean"]["n"] == 20 and len(result["per_target"]) == 20


def test_embedded_release():
    gold = taskweb.transfer()
    assert len(gold) == 21 and all(len(row) == 21 and t not in row for t, row in gold.items())
    assert "squad_v2" not in gold and "story_cloze" in taskweb.roe()
    pc, pm = taskweb.pc_pm()["anli_r3"]["boolq"]
    assert gold["anli_r3"]["boolq"] == pytest.approx(0.5 * pc + 0.5 * (0.2 * pm - 0.1))
    assert set(taskweb.setups()) >= {"finetune/t5l", "finetune/t5s", "mean"}
    assert set(taskweb.target_perf()) == set(gold)
    assert set(taskweb.EVAL_TARGETS) | {"piqa"} == set(gold)
    with pytest.raises(UserError, match="unknown TaskWeb setup"):
        taskweb.transfer("finetune/t5xxl")
    with pytest.raises(UserError, match="unknown TaskWeb task 'nope'"):
        taskweb.check_task("nope")


@pytest.mark.skipif(not os.path.isdir(shared_data.TASKWEB_ROOT), reason="../shared/data/taskweb not present")
def test_embedded_numbers_equal_the_shared_files():
    root = shared_data.TASKWEB_ROOT
    with open(os.path.join(root, "roe_scores_minilm_32.json")) as f:
        assert taskweb.roe() == json.load(f)
    with open(os.path.join(root, "t5l_finetune_target_perf.json")) as f:
        assert taskweb.target_perf() == {t: {s: v["mean"] for s, v in row.items()}
                                         for t, row in json.load(f).items()}
    with open(os.path.join(root, "transfer_scores.json")) as f:
        records = json.load(f)
    by_setup = {setup: taskweb.pc_pm(setup) for setup in taskweb.setups()}
    for r in records:
        for setup, pair in r["settings"].items():
            assert by_setup[setup][r["target"]][r["source"]] == tuple(pair)
        assert by_setup["mean"][r["target"]][r["source"]] == (r["pc_mean"], r["pm_mean"])


def test_ranking_metrics():
    gold = ["a", "b", "c", "d"]
    assert ranking.ndcg(gold, gold) == pytest.approx(1.0)
    # relevance 4,3,2,1 -> gains 15,7,3,1; swapping the first two loses (15-7)(1-1/log2 3).
    dcg_gold = 15 + 7 / np.log2(3) + 3 / 2 + 1 / np.log2(5)
    swapped = 7 + 15 / np.log2(3) + 3 / 2 + 1 / np.log2(5)
    assert ranking.ndcg(["b", "a", "c", "d"], gold) == pytest.approx(swapped / dcg_gold)
    perf = {"a": 0.8, "b": 0.6, "c": 0.5, "d": 0.4}
    assert ranking.regret_at_k(["c", "a", "b", "d"], gold, perf, 1) == pytest.approx((0.8 - 0.5) / 0.8)
    assert ranking.regret_at_k(["b", "a", "c", "d"], gold, perf, 2) == 0.0
    # ties keep the candidate order (a stable sort, as the authors')
    assert ranking.rank({"a": 1.0, "b": 2.0, "c": 1.0}, ["c", "b", "a"]) == ["b", "c", "a"]
    with pytest.raises(UserError, match="no finite score for source 'z'"):
        ranking.rank({"a": 1.0}, ["a", "z"])
    with pytest.raises(UserError, match="not a finite number"):
        ranking.rank({"a": float("nan")}, ["a"])
    with pytest.raises(UserError, match="k >= 1"):
        ranking.regret_at_k(gold, gold, perf, 0)
    result = ranking.evaluate({"t": {"a": 3, "b": 2}}, {"t": {"a": 1, "b": 0}}, {"t": {"a": .5, "b": .4}},
                              {"cat": ["t"]}, ["a", "b", "t"], ks=(1,))
    assert result["mean"] == {"ndcg": 1.0, "regret@1": 0.0, "n": 1}
    with pytest.raises(UserError, match="no predicted scores for target 'u'"):
        ranking.evaluate({}, {}, {}, {"cat": ["u"]}, ["a"])


def test_taskshop_formula_pivots_and_leave_one_out():
    # F(x→t) for the target t; T(s→p) measured among the known tasks {p: {s: T}}.
    f_t = {"s1": 0.5, "s2": 0.2, "p": 0.4, "q": 0.1}
    transfer = {"p": {"s1": 0.3, "s2": -0.1}, "s1": {"s2": 0.2}, "s2": {"s1": 0.0},
                "t": {"s1": 9.0, "s2": -9.0}}  # the target's row must never be read
    lam = 0.7
    ts = taskshop.taskshop_scores(f_t, transfer, "t", sources=["s1", "s2"], lam=lam)
    # s1: pivots p (T=0.3) and s2 (T(s1→s2)=0.0); q has no measured T(s1→q)
    pivot_s1 = np.mean([0.5 * 0.3 + 0.5 * 0.4, 0.5 * 0.0 + 0.5 * 0.2])
    assert ts["s1"] == pytest.approx(lam * pivot_s1 + (1 - lam) * 0.5)
    pivot_s2 = np.mean([0.5 * -0.1 + 0.5 * 0.4, 0.5 * 0.2 + 0.5 * 0.5])
    assert ts["s2"] == pytest.approx(lam * pivot_s2 + (1 - lam) * 0.2)
    transfer["t"] = {"s1": -9.0, "s2": 9.0}
    assert taskshop.taskshop_scores(f_t, transfer, "t", sources=["s1", "s2"], lam=lam) == ts
    assert taskshop.taskshop_scores(f_t, transfer, "t", ["s1"], lam=0.0)["s1"] == 0.5
    assert taskshop.taskshop_scores({"s1": 0.5}, {}, "t", lam=0.7) == {"s1": 0.5}  # no pivots
    with pytest.raises(UserError, match=r"lambda must be a number in \[0, 1\]"):
        taskshop.taskshop_scores(f_t, transfer, "t", lam=1.5)
    with pytest.raises(UserError, match="no F"):
        taskshop.taskshop_scores(f_t, transfer, "t", sources=["zz"])
    # directional on TaskWeb: TS(s, t) != TS(t, s)
    ts_all = taskshop.taskshop_table(taskweb.roe(), taskweb.transfer(), targets=["cb", "rte"])
    assert ts_all["cb"]["rte"] != ts_all["rte"]["cb"]


def test_lambda_tuned_on_the_held_out_target():
    curve = taskshop.lambda_curve(taskweb.roe(), [i / 10 for i in range(11)])
    assert [row["lambda"] for row in curve] == pytest.approx([i / 10 for i in range(11)])
    at = {round(row["lambda"], 1): row for row in curve}
    assert round(100 * at[0.7]["table2_ndcg"], 2) == 71.54
    assert round(100 * at[0.0]["table2_ndcg"], 2) == 64.52  # λ = 0: F alone
    assert taskshop.best_lambda(curve, "regret@5") == pytest.approx(0.7)  # the paper's choice
    assert taskshop.best_lambda(curve, "ndcg") == pytest.approx(0.9)
    with pytest.raises(UserError, match="unknown lambda criterion"):
        taskshop.best_lambda(curve, "map")


def fake_embed(texts):
    """A bag-of-letters embedding (L2-normalised): a stand-in for a sentence encoder."""
    out = np.zeros((len(texts), 26))
    for i, text in enumerate(texts):
        for ch in text.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_pluggable_embedding_estimator():
    assert estimators.roe_text({"inputs": "x?", "choices": ["yes", "no"]}) == "['yes', 'no']</s>x?"
    assert estimators.roe_text({"inputs": "x?", "choices": None}) == "None</s>x?"
    assert estimators.roe_text({"inputs": "x?", "answer_choices": []}) == "None</s>x?"
    target = np.array([[1.0, 0.0], [0.0, 1.0]])
    source = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert estimators.roe_similarity(target, source) == pytest.approx((1.0 + 0.8) / 2)
    f = estimators.EmbeddingEstimator(fake_embed, estimators.inputs_text, "letters", min_examples=2)
    examples = {"aaa": [{"inputs": "aaa"}, {"inputs": "aab"}], "zzz": [{"inputs": "zzz"}, {"inputs": "zzy"}],
                "t": [{"inputs": "aaa"}, {"inputs": "aaz"}]}
    scores = f(examples["t"], {k: v for k, v in examples.items() if k != "t"}, target="t")
    assert scores["aaa"] > scores["zzz"] and scores["aaa"] == pytest.approx(
        np.mean([1.0, fake_embed(["aaz"])[0] @ fake_embed(["aaa"])[0]]))
    table = f.table({"t": examples["t"]}, examples)
    assert set(table["t"]) == {"aaa", "zzz"} and table["t"]["aaa"] == pytest.approx(scores["aaa"])
    with pytest.raises(UserError, match="has 1 example.*at least 2"):
        f([{"inputs": "a"}], examples)
    # any F table plugs into TaskShop
    ts = taskshop.taskshop_scores(table["t"], {"aaa": {"zzz": 0.1}}, "t")
    assert set(ts) == {"aaa", "zzz"}


def test_sampling_is_seeded():
    rows = [{"inputs": str(i)} for i in range(50)]
    a = estimators.sample(rows, 5, seed=0, key="cb")
    assert a == estimators.sample(rows, 5, seed=0, key="cb") and len(a) == 5
    assert a != estimators.sample(rows, 5, seed=1, key="cb")
    assert estimators.sample(rows, None, 0) == rows and estimators.sample(rows, 80, 0) == rows


def test_model_embedding_estimator(tmp_path, monkeypatch):
    import tiny_models
    monkeypatch.setenv("RECROSS_VOCAB", tiny_models.SEQIO_TEST_VOCAB)
    model_dir = str(tmp_path / "model")
    tiny_models.save_tiny_model(model_dir, step=1)
    f = estimators.model_embedding_from_dir(model_dir, max_length=32, batch_size=4)
    examples = {"a": [{"inputs": "the cat sat"}, {"inputs": "on the mat"}],
                "b": [{"inputs": "quantum chromodynamics"}, {"inputs": "is a theory"}]}
    scores = f([{"inputs": "the cat sat"}], examples)
    assert scores["a"] == pytest.approx(1.0, abs=1e-5)  # the same text: cosine 1
    assert scores["b"] < scores["a"]
    vectors = f.vectors("a", examples["a"])
    assert vectors.shape == (2, tiny_models.tiny_config().emb_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def run_cli(capsys, *args):
    code = cli.main(["taskshop", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_evaluate_prints_table2(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "evaluate", "--gin_file=gin/runs/taskshop.gin", "--lambda_curve",
                           "--out", str(tmp_path / "eval"))
    assert code == 0
    lines = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    roe, ts = lines["RoE (authors' scores)"], lines["TaskShop (authors' RoE)"]
    for row, key in ((roe, "roe"), (ts, "taskshop")):
        for category in ("NLI/Entailment", "Paraphrase", "Commonsense", "Sentiment", "QA", "Semantics",
                         "all"):
            ndcg, regret = PUBLISHED[key][category]
            assert f"{ndcg:.2f} / {regret:.2f}" in row
    assert "All 20 (NDCG / Regret@5)" in out and "held-out target piqa" in out
    for name in ("table.md", "table.csv", "lambda.md", "results.json", "heatmap.png"):
        assert os.path.getsize(tmp_path / "eval" / name) > 0
    code, out, _ = run_cli(capsys, "evaluate", "--format", "csv", "--lambda", "0.5", "-k", "5")
    assert code == 0 and out.splitlines()[0] == "method,category,n,ndcg,regret@5"
    assert sum(line.startswith("TaskShop (authors' RoE),all,20,") for line in out.splitlines()) == 1
    code, out, _ = run_cli(capsys, "evaluate", "--tune_lambda",
                           "--gin.taskshop_cli.settings.lambda_criterion='ndcg'")
    assert code == 0 and "λ = 0.9 (TaskShop (authors' RoE))" in out


def test_cli_evaluate_a_score_file(capsys, tmp_path):
    roe = taskweb.roe()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"estimator": "x", "scores": roe}))
    code, out, _ = run_cli(capsys, "evaluate", "--no_authors", "--scores", f"mine={path}")
    assert code == 0 and "| mine | 66.53 / 4.79 |" in out and "| TaskShop (mine) | 75.14 / 3.51 |" in out
    pairs = sum(len(row) for row in roe.values())
    assert f"Spearman ρ of mine with the authors' RoE: 1.0000 over {pairs} pairs" in out


def test_cli_select(capsys):
    code, out, _ = run_cli(capsys, "select", "--target", "cb", "--top", "3")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| 1 ") or line.startswith("| 3 ")]
    assert len(rows) == 2 and "measured T" in out
    ts = taskshop.taskshop_table(taskweb.roe(), taskweb.transfer(), targets=["cb"])["cb"]
    best = max(ts, key=ts.get)
    assert f"| 1 | {best} |" in out
    code, out, _ = run_cli(capsys, "select", "--target", "story_cloze", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 5 and json.loads(out)[0]["transfer"] is None


@pytest.mark.parametrize("args, message", [
    (["select", "--target", "nope"], "unknown TaskWeb task 'nope'"),
    (["select"], "give one of --target TASK"),
    (["select", "--target", "cb", "--estimator", "bert"], "unknown estimator 'bert'"),
    (["evaluate", "--lambda", "2"], r"lambda must be a number in \[0, 1\]"),
    (["evaluate", "--setup", "x/y"], "unknown TaskWeb setup 'x/y'"),
    (["evaluate", "--scores", "nofile"], "--scores takes NAME=FILE"),
    (["evaluate", "--no_authors"], "nothing to evaluate"),
    (["score", "--n_source", "-3", "--out", "x.json"], "n_source must be a positive number"),
    (["evaluate", "--gin.taskshop_cli.settings.nope=1"], "nope"),
])
def test_cli_bad_input(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("recross: error: ")
    assert re.search(message, err)


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ('{"cb": [1, 2]}', "scores of target 'cb' are not an object"),
    ('{"cb": {"rte": "high"}}', "score 'rte' -> 'cb' is not a finite number"),
    ("[]", r"expected \{target: \{source: score\}\}"),
    ('{"cb": {"rte": 0.1}}', "lack target"),
])
def test_cli_malformed_score_file(capsys, tmp_path, content, message):
    path = tmp_path / "scores.json"
    path.write_text(content)
    code, _, err = run_cli(capsys, "evaluate", "--scores", f"x={path}")
    assert code == 2 and err.count("\n") == 1
    assert re.search(message, err)
    code, _, err = run_cli(capsys, "evaluate", "--scores", f"x={tmp_path / 'missing.json'}")
    assert code == 2 and "score file not found" in err


def test_cli_too_few_examples(capsys, tmp_path):
    path = tmp_path / "mytask.jsonl"
    path.write_text('{"inputs": "a", "choices": ["x", "y"]}\n{"inputs": "b"}\n')
    code, _, err = run_cli(capsys, "select", "--examples", str(path))
    assert code == 2 and "task 'mytask' has 2 example(s); at least 4 are needed" in err
    path.write_text('{"inputs": 3}\n')
    code, _, err = run_cli(capsys, "select", "--examples", str(path))
    assert code == 2 and "mytask.jsonl:1: an example needs a string 'inputs'" in err


@needs_shared
def test_score_and_select_with_a_tiny_model(capsys, tmp_path, monkeypatch):
    import tiny_models
    monkeypatch.setenv("RECROSS_VOCAB", tiny_models.SEQIO_TEST_VOCAB)
    model_dir = str(tmp_path / "model")
    tiny_models.save_tiny_model(model_dir, step=1)
    out_file = str(tmp_path / "f.json")
    code, out, _ = run_cli(capsys, "score", "--estimator", "model", "--model_dir", model_dir,
                           "--targets", "cb,rte", "--n_source", "3", "--n_target", "4", "--out", out_file)
    assert code == 0 and "Spearman rho" in out
    scores = taskshop_cli.read_scores(out_file)
    assert set(scores) == {"cb", "rte"} and len(scores["cb"]) == 21 and "cb" not in scores["cb"]
    code, out, _ = run_cli(capsys, "select", "--target", "cb", "--scores", out_file, "--top", "2")
    assert code == 0 and "| 2 |" in out
    code, _, err = run_cli(capsys, "evaluate", "--scores", f"tiny={out_file}")
    assert code == 2 and "lack target(s)" in err
    examples = tmp_path / "newtask.jsonl"
    examples.write_text("".join(json.dumps({"inputs": f"Is {i} even?", "choices": ["yes", "no"]}) + "\n"
                                for i in range(6)))
    code, out, _ = run_cli(capsys, "select", "--examples", str(examples), "--estimator", "model",
                           "--model_dir", model_dir, "--n_source", "2", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 5
    code, _, err = run_cli(capsys, "score", "--targets", "cb,nope", "--out", out_file)
    assert code == 2 and "unknown TaskWeb task 'nope'" in err
