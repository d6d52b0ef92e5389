"""The expert library and Retrieval-of-Experts (SPEC §3).

Each expert contributes S training instances, embedded (all-MiniLM-L6-v2 by default) from
`"Answer Choices: {choices joined by ' ||| '}, Instance: {input}"`; the keys are their vectors
in the project's exact index, the values the expert's id. A target's Q inputs are embedded the
same way, each retrieves its top-1 key, and the expert retrieved most often wins (ties: the
expert added earliest).

Experts are appended: their keys take rows after all earlier ones, and exact search breaks
equal scores by the lower row, so adding an expert never changes what an input retrieves unless
the new expert holds a strictly better key for it (never for an expert's own instances).

A library directory holds `library.json` (experts in order with their key counts, S, the
embedder's description) and `index/` (the project's index of the keys).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from recross_jax.errors import UserError
from recross_jax.io_utils import read_json_object, write_json_atomic
from recross_jax.retrieval import index as index_lib

MANIFEST = "library.json"
INDEX_DIR = "index"
INSTANCES_PER_EXPERT = 100
QUERIES_PER_TARGET = 32
CHOICE_SEPARATOR = " ||| "


class Embedder(Protocol):
    """What the library embeds with (e.g. `retrieval.sentence.SentenceEmbedder`)."""

    description: dict

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def instance_text(row: Mapping[str, Any]) -> str:
    """SPEC §3's text of a prompted example (`inputs`, optional `answer_choices`)."""
    choices = CHOICE_SEPARATOR.join(str(c) for c in row.get("answer_choices") or ())
    return f"Answer Choices: {choices}, Instance: {row['inputs']}"


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """What a target retrieved: the winning expert, its votes per expert (library order) and
    each query's top-1 expert."""

    expert: str
    votes: dict[str, int]
    per_query: list[str]


class ExpertLibrary:
    """Expert ids in the order they were added and their keys; build with `empty` or `load`."""

    def __init__(self, experts: list[str], counts: list[int], vectors: np.ndarray,
                 embedder: dict, instances_per_expert: int):
        self.experts = experts
        self.counts = counts
        self.vectors = vectors
        self.embedder = embedder
        self.instances_per_expert = instances_per_expert
        self._index: index_lib.Index | None = None

    @classmethod
    def empty(cls, embedder: Embedder,
              instances_per_expert: int = INSTANCES_PER_EXPERT) -> ExpertLibrary:
        """A library without experts whose keys `embedder` will make."""
        if instances_per_expert < 1:
            raise UserError(f"instances_per_expert must be positive, got {instances_per_expert}")
        return cls([], [], np.zeros((0, 0), np.float32), dict(embedder.description),
                   instances_per_expert)

    def __len__(self) -> int:
        return len(self.experts)

    def add(self, expert: str, rows: Sequence[Mapping[str, Any]], embedder: Embedder,
            seed: int = 0) -> None:
        """Appends `expert` with S of its training `rows` (a seeded sample when it has more)."""
        if not expert or "#" in expert:
            raise UserError(f"expert ids must be non-empty and without '#', got {expert!r}")
        if expert in self.experts:
            raise UserError(f"expert {expert!r} is already in the library")
        if not rows:
            raise UserError(f"expert {expert!r} has no training instances")
        self._check_embedder(embedder)
        size = self.instances_per_expert
        chosen = (np.sort(np.random.default_rng(seed).choice(len(rows), size, replace=False))
                  if len(rows) > size else np.arange(len(rows)))
        vectors = np.asarray(embedder.encode([instance_text(rows[i]) for i in chosen]),
                             np.float32)
        self.vectors = vectors if not self.experts else np.concatenate([self.vectors, vectors])
        self.experts.append(expert)
        self.counts.append(len(vectors))
        self._index = None

    def retrieve(self, rows: Sequence[Mapping[str, Any]], embedder: Embedder) -> Retrieval:
        """Retrieval-of-Experts for a target's query `rows` (SPEC §3: Q of its inputs)."""
        if not self.experts:
            raise UserError("the expert library is empty: add experts before retrieving")
        if not rows:
            raise UserError("no target inputs to retrieve experts with")
        self._check_embedder(embedder)
        owners = self.owners(np.asarray(embedder.encode([instance_text(r) for r in rows])))
        votes = np.bincount(owners, minlength=len(self.experts))
        return Retrieval(expert=self.experts[int(np.argmax(votes))],  # argmax: the earliest
                         votes=dict(zip(self.experts, votes.tolist())),
                         per_query=[self.experts[i] for i in owners])

    def owners(self, queries: np.ndarray) -> np.ndarray:
        """The library position of the expert owning each query's top-1 key [q]."""
        ids, _ = self.index.search(queries, 1)
        # Key ids sorted once; each hit's owner is found by binary search, not a loop.
        order = np.argsort(self.index.ids)
        owners = np.repeat(np.arange(len(self.experts)), self.counts)[order]
        return owners[np.searchsorted(self.index.ids[order], ids[:, 0])]

    @property
    def index(self) -> index_lib.Index:
        """The exact index over the keys (built on first use after a change)."""
        if self._index is None:
            key_ids = [f"{e}#{i}" for e, n in zip(self.experts, self.counts) for i in range(n)]
            self._index = index_lib.build_index(self.vectors, key_ids, backend="exact",
                                                metric="dot", embedder=self.embedder)
        return self._index

    def save(self, directory: str) -> None:
        """Writes the library (the index first, then the manifest, each atomically)."""
        if not self.experts:
            raise UserError("refusing to save an empty expert library")
        self.index.save(os.path.join(directory, INDEX_DIR))
        write_json_atomic(os.path.join(directory, MANIFEST), {
            "experts": self.experts, "counts": self.counts, "embedder": self.embedder,
            "instances_per_expert": self.instances_per_expert})

    @classmethod
    def load(cls, directory: str) -> ExpertLibrary:
        """Reads a library written by `save`."""
        path = os.path.join(directory, MANIFEST)
        if not os.path.isfile(path):
            raise UserError(f"no expert library at {directory} (missing {MANIFEST})")
        manifest = read_json_object(path, "expert library manifest",
                                    ("experts", "counts", "embedder", "instances_per_expert"))
        if len(manifest["experts"]) != len(manifest["counts"]):
            raise UserError(f"expert library manifest {path} is corrupt: "
                            f"{len(manifest['experts'])} experts, {len(manifest['counts'])} counts")
        index = index_lib.load_index(os.path.join(directory, INDEX_DIR),
                                     expect={"backend": "exact", "embedder": manifest["embedder"],
                                             "count": sum(manifest["counts"])})
        library = cls(list(manifest["experts"]), list(manifest["counts"]), index.vectors(),
                      manifest["embedder"], manifest["instances_per_expert"])
        library._index = index
        return library

    def _check_embedder(self, embedder: Embedder) -> None:
        if dict(embedder.description) != self.embedder:
            raise UserError("the embedder differs from the one that made the library's keys "
                            f"({self.embedder})")
