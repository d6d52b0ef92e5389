"""`make demo`: the whole ReCross pipeline on the embedded BIG-bench corpus at mini scale.

Vocabulary → the mini T5 trained on a 64-task sample of the BIG-bench upstream mixture → the
upstream encoder's index (ReCross) and a MiniLM index (SBERT) → mined distant supervision → the
cross-encoder reranker → 3 held-out T0 targets × 5 methods × 2 query sets → the results table and
the retrieved-task heatmap. Each stage is skipped when its outputs exist and its arguments are
unchanged (`recross_jax/pipeline.py`), so a re-run is fast. Sizes keep it under 20 minutes on 2
CPU cores; RESULTS.md has the full protocol. Output: `$RECROSS_DEMO_DIR` (default runs/demo).
"""
from __future__ import annotations

import os
import sys

from recross_jax import pipeline

DEMO = pipeline.PipelineConfig(
    out_dir=os.environ.get("RECROSS_DEMO_DIR", os.path.join("runs", "demo")),
    upstream="bigbench_upstream_sample",
    targets=("bigbench.strategyqa", "bigbench.winowhy", "bigbench.logical_deduction.three_objects"),
    gin_bindings=("tasks.bigbench.upstream_cap.cap=100",),
)

if __name__ == "__main__":
    sys.exit(pipeline.main([DEMO]))
