"""Retrieval: pool embedding, sentence embedders, indexes and query aggregation."""
