"""Reranking: the cross-encoder reranker and the distant supervision mined to train it."""
