"""`recross index build` + `recross retrieve` end to end on a tiny model and a small BIG-bench mixture."""
import json
import os

import bigbench_fixtures
import numpy as np
import pytest
import tiny_models

from recross_jax import cli
from recross_jax.retrieval import embed, indexing
from tasks import bigbench

PREFIX = "bbidx"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("indexing")
    bigbench.register_bigbench(bigbench_fixtures.write_tasks_dir(str(root)), cap=20, prefix=PREFIX)
    model_dir = str(root / "model")
    tiny_models.save_tiny_model(model_dir, step=7)
    queries = root / "queries.jsonl"
    queries.write_text("".join(json.dumps({"inputs": q}) + "\n" for q in
                               ["What is 5 + 1?", "Spell 12.", "Color 3?"]))
    return root, model_dir, str(queries)


def build_args(root, model_dir, name, *extra):
    return ["index", "build", "--gin_file=gin/runs/index.gin", "--tasks_module", "tasks.common",
            f"--gin.MIXTURE='{PREFIX}_upstream'", f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.INDEX_DIR='{root / name}'", "--gin.indexing.build.shard_size=16",
            "--gin.indexing.build.max_examples_per_task=20", *extra]


def test_index_build_and_retrieve(setup, capsys, monkeypatch):
    root, model_dir, queries = setup
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert cli.main(build_args(root, model_dir, "index_model")) == 0
    out = capsys.readouterr().out
    manifest = embed.read_manifest(str(root / "index_model" / "pool"))
    expected = sum(min(20, bigbench.num_examples(f"{PREFIX}.{t}", "train"))
                   for t in bigbench_fixtures.UPSTREAM)
    assert manifest["count"] == expected and f"indexed {expected} examples" in out
    assert manifest["embedder"]["kind"] == "model" and manifest["embedder"]["step"] == 7
    assert (root / "index_model" / "config.gin").read_text().count("indexing.build") >= 1

    out_file = root / "retrieved.jsonl"
    assert cli.main(["retrieve", "--index", str(root / "index_model"), "--queries", queries, "--k", "9",
                     "--out", str(out_file), "--tasks_module", "tasks.common"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 9
    assert all(r["task"].startswith(f"{PREFIX}.") and r["inputs"] and "score" in r for r in rows)
    assert "upstream task" in printed and rows[0]["task"] in printed

    # The same retrieval through the library equals a brute-force search over the pool.
    vectors, pool_rows, _ = embed.load_pool(str(root / "index_model" / "pool"))
    embedder = indexing.make_embedder("model", f"{PREFIX}_upstream", model_dir, max_length=256)
    query_vectors = embedder([{"inputs": "What is 5 + 1?"}])
    best = np.argsort(-(vectors @ query_vectors[0]), kind="stable")[:3]
    assert [r["example_id"] for r in rows[:3]] == [pool_rows[i]["example_id"] for i in best]


def test_resume_after_kill_rebuilds_nothing_twice(setup, monkeypatch):
    root, model_dir, _ = setup
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    calls = []
    original = embed.T5EncoderEmbedder.__call__

    def dying(self, rows):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(embed.T5EncoderEmbedder, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        cli.main(build_args(root, model_dir, "index_resume"))
    assert embed.read_manifest(str(root / "index_resume" / "pool"))["count"] == 32
    monkeypatch.setattr(embed.T5EncoderEmbedder, "__call__", original)
    assert cli.main(build_args(root, model_dir, "index_resume")) == 0
    a, rows_a, _ = embed.load_pool(str(root / "index_model" / "pool"))
    b, rows_b, _ = embed.load_pool(str(root / "index_resume" / "pool"))
    assert rows_a == rows_b
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("content,message", [
    ("", "no queries"),
    ("not json\n", ":1: not valid JSON"),
    ('{"inputs": "ok"}\n{"text": "x"}\n', ":2: each line needs a non-empty string field 'inputs'"),
    ('{"inputs": "   "}\n', ":1: each line needs"),
])
def test_bad_queries(setup, tmp_path, capsys, content, message):
    root, _, _ = setup
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    code = cli.main(["retrieve", "--index", str(root / "index_model"), "--queries", str(path), "--k", "3",
                     "--tasks_module", "tasks.common"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_index_and_bad_k(setup, capsys):
    root, _, queries = setup
    assert cli.main(["retrieve", "--index", str(root / "nope"), "--queries", queries, "--k", "3",
                     "--tasks_module", "tasks.common"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["retrieve", "--index", str(root / "index_model"), "--queries", queries, "--k", "0",
                     "--tasks_module", "tasks.common"]) == 2
    assert "--k must be at least 1" in capsys.readouterr().err


def test_long_query_is_truncated_with_a_warning(setup, tmp_path, capsys):
    root, _, _ = setup
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"inputs": text}) + "\n"
                            for text in ("word " * 400, "short query", "word " * 300)))
    assert cli.main(["retrieve", "--index", str(root / "index_model"), "--queries", str(path), "--k", "2",
                     "--tasks_module", "tasks.common"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1
    assert "2 of 3 queries are longer than 256 tokens" in warnings[0]
    assert "truncated to it" in warnings[0]


def test_missing_model_dir_is_a_user_error(setup, capsys, monkeypatch):
    root, _, _ = setup
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert cli.main(build_args(root, str(root / "no_model"), "index_bad")) == 2
    assert "no_model" in capsys.readouterr().err


def test_bad_dtype_is_one_line_exit_2_and_leaves_no_index_dir(setup, capsys, monkeypatch):
    root, model_dir, _ = setup
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert cli.main(build_args(root, model_dir, "index_bad_dtype",
                               "--gin.indexing.build.dtype='float16'")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "T5Config.dtype must be one of ['bfloat16', 'float32'], got 'float16'" in err, err
    assert not (root / "index_bad_dtype").exists()


def test_group_removal_excludes_tasks_and_fills_up(setup, monkeypatch):
    root, model_dir, _ = setup
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    if not (root / "index_model").exists():
        assert cli.main(build_args(root, model_dir, "index_model")) == 0
    retriever = indexing.Retriever(str(root / "index_model"))
    queries = ["What is 5 + 1?", "What is 9 + 1?"]
    full = retriever.retrieve(queries, 12)
    most_retrieved = max({r["task"] for r in full}, key=[r["task"] for r in full].count)
    excluded = (most_retrieved, f"{PREFIX}.container")
    removed = retriever.retrieve(queries, 12, exclude_tasks=excluded)
    assert len(removed) == 12
    assert not any(indexing.in_groups(r["task"], excluded) for r in removed)
    assert len({r["task"] for r in removed}) >= 1


def test_embedder_dtype_is_recorded_and_queries_use_it(setup, monkeypatch):
    root, model_dir, _ = setup
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert cli.main(build_args(root, model_dir, "index_bf16", "--gin.indexing.build.backend='exact'",
                               "--gin.indexing.build.dtype='bfloat16'")) == 0
    vectors, pool, manifest = embed.load_pool(str(root / "index_bf16" / "pool"))
    assert manifest["embedder"]["dtype"] == "bfloat16"
    retriever = indexing.Retriever(str(root / "index_bf16"))
    assert retriever.embedder.description == manifest["embedder"]
    float32 = indexing.make_embedder("model", f"{PREFIX}_upstream", model_dir, max_length=256)
    assert float32.description["dtype"] == "float32"
    reference = float32(pool[:16])
    cosine = (vectors[:16] * reference).sum(1) / np.linalg.norm(vectors[:16], axis=1) / np.linalg.norm(
        reference, axis=1)
    assert cosine.min() > 0.999 and not np.array_equal(vectors[:16], reference)
    # Queries go through the same bfloat16 encoder as the pool: a pool row embeds to its vector.
    query = retriever.embedder([pool[3]])[0]
    np.testing.assert_allclose(query, vectors[3], rtol=1e-6, atol=1e-6)


def test_sbert_embedder_takes_max_length_and_dtype():
    embedder = indexing.make_embedder("sbert", "", max_length=32, dtype="bfloat16")
    assert embedder.description == {"kind": "sbert", "model": "all-MiniLM-L6-v2", "max_length": 32,
                                    "dtype": "bfloat16"}
    assert embedder.sentence_embedder.max_length == 32
    assert embedder.sentence_embedder.config.dtype == "bfloat16"


def test_queries_are_embedded_with_the_step_the_index_records(tmp_path, setup, monkeypatch):
    root, _, _ = setup
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    model_dir = str(tmp_path / "model")
    tiny_models.save_tiny_model(model_dir, step=3, seed=0)
    assert cli.main(build_args(root, model_dir, "index_step3")) == 0
    tiny_models.save_tiny_model(model_dir, step=5, seed=1)  # trained on after the index was built
    retriever = indexing.Retriever(str(root / "index_step3"))
    assert retriever.embedder.description["step"] == 3
    vectors, pool_rows, _ = embed.load_pool(str(root / "index_step3" / "pool"))
    query = retriever.embedder([{"inputs": pool_rows[0]["inputs"]}])[0]
    np.testing.assert_allclose(query, vectors[0], atol=1e-5)
    latest = indexing.make_embedder("model", f"{PREFIX}_upstream", model_dir, max_length=256)
    assert latest.description["step"] == 5
    assert not np.allclose(latest([{"inputs": pool_rows[0]["inputs"]}])[0], vectors[0], atol=1e-3)
