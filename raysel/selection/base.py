"""What every selector takes and returns: a Request over arrays in, a Selection out.

A selector ranks indices 0..n-1 of its inputs. `order` is the ranking (length up to n_rank); its
first `k` entries are the selection. Ties always go to the lower id (ascending id strings), so a run
is deterministic whatever order the inputs come in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IFD_AT_OR_ABOVE_MAX = "ifd>=max"
IFD_INVALID = "ifd invalid"  # NaN, infinite or negative: not a ratio of perplexities
DUPLICATE = "duplicate"


@dataclass
class Request:
    """The inputs of one selection. Arrays are aligned: index i is the same sample everywhere."""

    ifd: np.ndarray  # float64 (n,); NaN where a method needs no IFD
    k: int
    n_rank: int  # how far to rank (>= k); the re-score pool takes the first n_rank
    ids: np.ndarray  # (n,) unique strings
    features: object = None  # scipy CSR (n, V): TF-IDF rows, for iterit
    embeddings: np.ndarray | None = None  # (n, d) float16/32, for embedding and kcenter
    gamma: float = 0.1
    ifd_max: float = 1.0
    dedup_threshold: float | None = None
    seed: int = 0
    scores: dict = field(default_factory=dict)  # every named score array (ifd, losses, ...), aligned
    options: dict = field(default_factory=dict)  # a selector's own settings

    @property
    def n(self) -> int:
        return len(self.ids)


@dataclass
class Selection:
    """A ranking of the inputs; order[:k] is selected. Per-pick arrays follow `order`."""

    method: str
    order: np.ndarray  # int64 indices, best first
    k: int  # selected = order[:k] (fewer than asked when fewer samples can be selected)
    diversity: np.ndarray  # float64 per ranked pick: diversity gain at pick time (NaN: none)
    score: np.ndarray  # float64 per ranked pick: the value that ranked it
    reason: np.ndarray  # object (n,): None, or why the sample could not be ranked
    duplicate_of: np.ndarray  # int64 (n,): index of the ranked sample it duplicates, or -1
    stats: dict = field(default_factory=dict)

    @property
    def selected(self) -> np.ndarray:
        return self.order[:self.k]

    def rank_of(self) -> np.ndarray:
        """int64 (n,): position in `order` (0 = best), or -1 when not ranked."""
        rank = np.full(len(self.reason), -1, dtype=np.int64)
        rank[self.order] = np.arange(len(self.order))
        return rank


def tie_ranks(ids) -> np.ndarray:
    """int64 (n,): each id's position in ascending string order (lower wins a tie)."""
    ids = np.asarray(ids, dtype=str)
    by_id = np.argsort(ids, kind="stable")
    if len(ids) > 1 and (ids[by_id[1:]] == ids[by_id[:-1]]).any():
        dup = ids[by_id[1:]][ids[by_id[1:]] == ids[by_id[:-1]]][0]
        raise ValueError(f"ids must be unique; {dup!r} appears more than once")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[by_id] = np.arange(len(ids))
    return rank


def ifd_eligibility(ifd: np.ndarray, ifd_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(eligible mask, reason per index): IFD must be finite, >= 0 and below ifd_max."""
    ifd = np.asarray(ifd, dtype=np.float64)
    valid = np.isfinite(ifd) & (ifd >= 0)
    eligible = valid & (ifd < ifd_max)
    reason = np.full(len(ifd), None, dtype=object)
    reason[~valid] = IFD_INVALID
    reason[valid & ~eligible] = IFD_AT_OR_ABOVE_MAX
    return eligible, reason


def no_reasons(n: int) -> np.ndarray:
    return np.full(n, None, dtype=object)


def no_duplicates(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)
