"""ELM (SPEC §3): adapter experts on a frozen backbone, their checkpoints, the expert library
with Retrieval-of-Experts, and merging."""
