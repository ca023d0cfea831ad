"""What every selector takes and returns: a Request over arrays in, a Selection out.

A selector ranks indices 0..n-1 of its inputs. `order` is the ranking (length up to n_rank); its
first `k` entries are the selection. Ties always go to the lower id (ascending id strings), so a run
is deterministic whatever order the inputs come in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IFD_AT_OR_ABOVE_MAX = "ifd>=max"
QUOTA_FULL = "quota full"  # passed over for the selection: its group had reached its quota
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
    groups: np.ndarray | None = None  # (n,) a label per sample (e.g. its source), for quotas
    quotas: dict = field(default_factory=dict)  # label -> share of k (below 1) or count; "*": any other label

    @property
    def n(self) -> int:
        return len(self.ids)

    def quota(self) -> Quota | None:
        """A fresh Quota for this request's selection, or None without quotas."""
        return Quota.of(self.groups, self.quotas, self.k) if self.quotas else None


class Quota:
    """Mixture quotas: of the first k picks, at most caps[g] may come from group g. Labels without
    a quota (and no "*") are not capped. The selectors consult it pick by pick (admits, take); a
    sample passed over because its group was full is remembered, for its reason."""

    def __init__(self, codes: np.ndarray, labels: list[str], caps: np.ndarray, k: int):
        self.codes, self.labels, self.caps, self.k = codes, labels, caps, k
        self.taken = np.zeros(len(labels), dtype=np.int64)
        self.passed_over: list[int] = []

    @classmethod
    def of(cls, groups, quotas: dict, k: int) -> Quota:
        if groups is None:
            raise ValueError("quotas need groups= (a label per sample)")
        names = np.asarray(["" if g is None else str(g) for g in groups], dtype=object)
        labels, codes = np.unique(names, return_inverse=True)
        caps = np.array([quota_cap(quotas.get(label, quotas.get("*")), k) for label in labels], dtype=np.int64)
        return cls(codes.astype(np.int64), labels.tolist(), caps, k)

    def admits(self, i: int, step: int) -> bool:
        """Whether sample i may be pick number `step` (past k, the quotas no longer bind)."""
        return step >= self.k or self.taken[self.codes[i]] < self.caps[self.codes[i]]

    def take(self, i: int, step: int) -> None:
        if step < self.k:
            self.taken[self.codes[i]] += 1

    def pass_over(self, i: int) -> None:
        self.passed_over.append(int(i))

    def label(self, reason: np.ndarray, selected: np.ndarray) -> np.ndarray:
        """`reason` with QUOTA_FULL for every sample passed over and not selected in the end."""
        reason = reason.copy()
        out = np.setdiff1d(np.asarray(self.passed_over, dtype=np.int64), selected)
        reason[out] = QUOTA_FULL
        return reason


def quota_cap(quota: float | None, k: int) -> int:
    """A group's cap among k picks: a share of k (below 1, rounded), a count, or none (k)."""
    if quota is None:
        return k
    return int(round(quota * k)) if quota < 1 else int(quota)


def apply_quota(sel: Selection, quota: Quota) -> Selection:
    """A ranking that did not consult the quotas, re-ordered to honour them: the first k samples
    in ranking order whose group has room, then the rest of the ranking in order."""
    accepted, rest = [], []  # positions in sel.order
    for pos, i in enumerate(sel.order.tolist()):
        if len(accepted) < sel.k and quota.admits(i, len(accepted)):
            quota.take(i, len(accepted))
            accepted.append(pos)
        else:
            if len(accepted) < sel.k:
                quota.pass_over(i)
            rest.append(pos)
    at = np.asarray(accepted + rest, dtype=np.int64)
    order = sel.order[at]
    return Selection(sel.method, order, len(accepted), sel.diversity[at], sel.score[at],
                     quota.label(sel.reason, order[:len(accepted)]), sel.duplicate_of, sel.stats)


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
