"""The retrieval benchmark's recall@k: ties at the cut are not misses; missing rows are."""
import importlib.util
import os

import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "bench_retrieval.py")
spec = importlib.util.spec_from_file_location("bench_retrieval", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_recall_counts_tied_rows_and_not_worse_or_missing_ones():
    # Rows 1 and 2 are duplicates: the exact top-2 of the query is {0, 1} or, equally, {0, 2}.
    pool = np.array([[3.0, 0.0], [2.0, 0.0], [2.0, 0.0], [1.0, 0.0]], np.float32)
    queries = np.array([[1.0, 0.0]], np.float32)
    truth = bench.Truth.of(pool, queries, np.array([[0, 1]]), "dot")
    assert truth.recall(np.array([[0, 2]])) == 1.0
    assert truth.recall(np.array([[0, 3]])) == 0.5
    assert truth.recall(np.array([[0, -1]])) == 0.5  # FAISS pads a short answer with -1


def test_recall_scores_cosine_on_normalised_vectors():
    # Row 0 wins by dot product (11 vs 1.01), row 1 by cosine (0.77 vs 1.0).
    pool = np.array([[10.0, 10.0], [1.0, 0.1]], np.float32)
    queries = np.array([[1.0, 0.1]], np.float32)
    truth = bench.Truth.of(pool, queries, np.array([[1]]), "cosine")
    assert truth.recall(np.array([[1]])) == 1.0
    assert truth.recall(np.array([[0]])) == 0.0
