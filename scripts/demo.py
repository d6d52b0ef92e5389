"""`make demo`: the whole ReCross pipeline on the embedded ReCross release at mini scale.

BERT2BERT warm-started from all-MiniLM-L6-v2 and trained briefly on T0's upstream mixture
(`t0_upstream`, 34 datasets, capped at 100 examples per dataset; MiniLM's WordPiece vocabulary,
so no vocabulary stage) → the upstream encoder's index (ReCross) and a MiniLM index (SBERT) →
mined distant supervision → the cross-encoder reranker → 3 of the paper's Table-1 targets × 5
methods × 1 query set → the results table and the retrieved-task heatmap. Each stage is skipped
when its outputs exist and its arguments are unchanged (`recross_jax/pipeline.py`), so a re-run is
fast. Sizes keep it under 20 minutes on 2 CPU cores; RESULTS.md has the stage times.
Output: `$RECROSS_DEMO_DIR` (default runs/demo).
"""
from __future__ import annotations

import os
import sys

from recross_jax import pipeline

DEMO = pipeline.PipelineConfig(
    out_dir=os.environ.get("RECROSS_DEMO_DIR", os.path.join("runs", "demo")),
    upstream="t0_upstream",
    targets=("recross.super_glue_cb", "recross.super_glue_wic", "recross.winogrande_winogrande_xl"),
    gin_bindings=("tasks.recross.upstream_cap.cap=100",),
    # BERT2BERT (48.9M parameters) costs about twice the mini T5's time per stage: fewer steps,
    # tuples, retrieved examples, test examples and one query set keep it under 20 minutes on
    # 2 cores (re-learning, about 1.4 s a step, was the largest stage at |R| = 32).
    train_steps=100,
    num_tuples=4,
    num_retrieved=16,
    max_eval_examples=40,
    num_query_sets=1,
)

if __name__ == "__main__":
    sys.exit(pipeline.main([DEMO]))
