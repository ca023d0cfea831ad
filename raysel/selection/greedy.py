"""IterIT greedy selection (docs/methods.md: Diversity, The greedy): complexity x n-gram
diversity with coverage decay.

    repeat n_rank times:  pick i* = argmax over unpicked eligible i of  IFD(i) * D(i | S)
                          D(i | S) = sum_t gamma ** c_t(S) * w[i, t]      (c_t: picked rows holding t)

D(i | S) only falls as S grows, so a max-heap of stale upper bounds gives exactly the naive loop's
sequence (lazy greedy): pop the top; if its bound was computed for the current S it is the argmax,
otherwise re-evaluate that row only and push it back. Ties go to the lower tie rank (the id order).

Exactness. Lazy and naive compute a row's D in different contexts (one row, or all rows at once);
floating-point sums would depend on the order of terms and could flip near-ties. So D is summed in
fixed point: each term w * gamma**c is one float32 product, truncated to a multiple of 2**-44, and
the integers are added, which is exact in any order. D differs from a float64 sum by under 1e-6
relative (float32 products), far below any difference that decides a pick.
"""

from __future__ import annotations

import heapq
import logging
import time

import numpy as np
import scipy.sparse as sp

from raysel.progress import Progress
from raysel.selection.base import Quota, Request, Selection, ifd_eligibility, no_duplicates, tie_ranks

log = logging.getLogger(__name__)

SCALE = 2.0**44  # fixed point of D's terms: resolution 5.7e-14
INV_SCALE = 1.0 / SCALE
MAX_ROW_MASS = 2.0**18  # a row's weights must sum below this so that its fixed-point sum fits int64


def decay_table(gamma: float, max_count: int) -> np.ndarray:
    """gamma ** c * SCALE as float32, for c = 0..max_count (0 ** 0 = 1: an uncovered n-gram keeps its weight)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"diversity decay gamma must be in [0, 1], got {gamma}")
    return (np.power(float(gamma), np.arange(max_count + 1, dtype=np.float64)) * SCALE).astype(np.float32)


def count_cap(table: np.ndarray) -> int:
    """The count past which coverage no longer changes any term, so counts may saturate there.

    Weights are at most 1, so once table[c] < 1 every term w * table[c] truncates to 0; with
    gamma = 1 the table is constant and any cap will do.
    """
    below_one = np.flatnonzero(table < 1.0)
    return int(below_one[0]) if len(below_one) else min(len(table) - 1, 255)


class Coverage:
    """c_t(S) for every n-gram column (saturating where it stops mattering) and the per-column
    factor decay[t] = gamma ** c_t * SCALE that D's terms use."""

    def __init__(self, n_columns: int, gamma: float, max_count: int):
        self.table = decay_table(gamma, max_count)
        self.cap = count_cap(self.table)
        dtype = np.uint8 if self.cap <= 255 else np.uint16 if self.cap <= 65535 else np.int64
        self.counts = np.zeros(n_columns, dtype=dtype)
        self.decay = np.full(n_columns, self.table[0], dtype=np.float32)

    def cover(self, cols: np.ndarray) -> None:
        """One more picked row holds each of `cols` (unique columns)."""
        c = np.minimum(self.counts[cols].astype(np.int64) + 1, self.cap)
        self.counts[cols] = c
        self.decay[cols] = self.table[c]


def check_features(features) -> sp.csr_matrix:
    """The features as canonical CSR (sorted unique columns), non-negative, rows of bounded mass."""
    if not sp.issparse(features):
        raise TypeError("features must be a scipy.sparse matrix (CSR), one row per sample")
    w = sp.csr_matrix(features)
    if not w.has_canonical_format:
        w = w.copy()
        w.sum_duplicates()
    low, high = (w.data.min(), w.data.max()) if w.nnz else (0.0, 0.0)
    if not (low >= 0 and high <= 1.0):  # also catches NaN and infinity
        raise ValueError(f"feature weights must lie in [0, 1] (found {low:.3g}..{high:.3g}); "
                         "use L2-normalised non-negative rows, as TF-IDF rows are")
    # weights are at most 1, so only a row with that many entries could reach the bound
    if w.nnz and np.diff(w.indptr).max() >= MAX_ROW_MASS and row_sums(w).max() >= MAX_ROW_MASS:
        raise ValueError(f"a feature row sums to {row_sums(w).max():.3g}; rows must sum below {MAX_ROW_MASS:.0f} "
                         "(L2-normalise them, as TF-IDF rows are)")
    return w


def row_sums(w: sp.csr_matrix) -> np.ndarray:
    return np.asarray(w.sum(axis=1), dtype=np.float64).ravel()


def diversity_gains(w: sp.csr_matrix, decay, chunk_nnz: int = 2**23) -> np.ndarray:
    """D(i | S) of every row (float64), given decay[t] = gamma ** c_t(S) * SCALE (an array over
    columns, or one float32 for all of them); in chunks of rows."""
    out = np.empty(w.shape[0], dtype=np.float64)
    start = 0
    while start < w.shape[0]:
        stop = int(np.searchsorted(w.indptr, w.indptr[start] + chunk_nnz, side="right")) - 1
        stop = min(max(stop, start + 1), w.shape[0])
        a, b = w.indptr[start], w.indptr[stop]
        out[start:stop] = _segment_sums(w.data[a:b], w.indices[a:b], np.diff(w.indptr[start:stop + 1]), decay)
        start = stop
    return out


def gains_of_rows(w: sp.csr_matrix, rows: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """D(i | S) of the given rows only: the same terms as diversity_gains, so the same bits."""
    starts, ends = w.indptr[rows].tolist(), w.indptr[rows + 1].tolist()
    if len(starts) == 1:
        data, cols = w.data[starts[0]:ends[0]], w.indices[starts[0]:ends[0]]
    else:
        data = np.concatenate([w.data[a:b] for a, b in zip(starts, ends, strict=True)])
        cols = np.concatenate([w.indices[a:b] for a, b in zip(starts, ends, strict=True)])
    return _segment_sums(data, cols, np.subtract(ends, starts), decay)


def _segment_sums(data: np.ndarray, cols: np.ndarray, lengths: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """Per segment of consecutive terms: sum of trunc(w * decay[col]) as integers, back in D's units.

    Each term is one float32 multiply (the same bits wherever it is computed); integer sums are
    exact in any order. Empty segments sum to 0.
    """
    terms = (data * (decay[cols] if np.ndim(decay) else decay)).astype(np.uint64)
    sums = np.zeros(len(lengths), dtype=np.uint64)
    nonempty = lengths > 0
    if nonempty.any():
        # reduceat over non-empty segments only: each runs to the next non-empty segment's start
        sums[nonempty] = np.add.reduceat(terms, (np.cumsum(lengths) - lengths)[nonempty])
    return sums.astype(np.float64) * INV_SCALE


def lazy_greedy(w: sp.csr_matrix, ifd: np.ndarray, candidates: np.ndarray, tie_rank: np.ndarray,
                n_rank: int, gamma: float, max_batch: int = 512,
                quota: Quota | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank up to n_rank candidates by the IterIT greedy. Returns (order, D at pick, score at pick).

    w: canonical CSR features (see check_features); ifd: finite and >= 0 for every candidate;
    tie_rank: a distinct integer per index, lower wins ties (the id order). quota: mixture quotas
    for the first quota.k picks: the best candidate whose group is full is passed over (and comes
    back for the ranking past k).

    Stale rows are re-evaluated in batches (growing from about half what the last pick needed, up to
    max_batch) to spread NumPy's per-call cost; re-evaluating a row early only tightens its bound,
    so the sequence is unchanged.
    """
    n_rank = min(int(n_rank), len(candidates))
    coverage = Coverage(w.shape[1], gamma, n_rank)
    gains = diversity_gains(w, coverage.table[0])  # D(i | {}): every decay is table[0], no gather needed
    keys = -(ifd[candidates] * gains[candidates])
    heap = list(zip(keys.tolist(), tie_rank[candidates].tolist(), candidates.tolist(), strict=True))
    heapq.heapify(heap)
    fresh_at = np.zeros(w.shape[0], dtype=np.int64)  # |S| when a row's bound was computed
    order = np.empty(n_rank, dtype=np.int64)
    picked_gain = np.empty(n_rank, dtype=np.float64)
    picked_score = np.empty(n_rank, dtype=np.float64)
    evaluations, started, last_evaluations = 0, time.perf_counter(), 0
    progress = Progress(n_rank, "iterit greedy", "picks")
    passed_over, step = [], 0
    while step < n_rank:
        if quota is not None and step == quota.k:  # the quotas bind the selection only
            for entry in passed_over:
                heapq.heappush(heap, entry)
            passed_over = []
        # start near what the last pick needed (neighbouring picks need about as many), then double
        batch_size, evaluations_before = max(1, last_evaluations // 2), evaluations
        while heap and fresh_at[heap[0][2]] != step:
            stale = []
            while heap and len(stale) < batch_size and fresh_at[heap[0][2]] != step:
                stale.append(heapq.heappop(heap))
            rows = np.fromiter((e[2] for e in stale), dtype=np.int64, count=len(stale))
            d = gains_of_rows(w, rows, coverage.decay)
            gains[rows] = d
            fresh_at[rows] = step
            for key, (_, tie, i) in zip((-(ifd[rows] * d)).tolist(), stale, strict=True):
                heapq.heappush(heap, (key, tie, i))
            evaluations += len(stale)
            batch_size = min(2 * batch_size, max_batch)
        last_evaluations = evaluations - evaluations_before
        if not heap:
            break  # every remaining candidate's group is full
        if quota is not None and not quota.admits(heap[0][2], step):
            quota.pass_over(heap[0][2])
            passed_over.append(heapq.heappop(heap))
            continue
        neg_score, _, i = heapq.heappop(heap)
        order[step], picked_gain[step], picked_score[step] = i, gains[i], -neg_score
        coverage.cover(w.indices[w.indptr[i]:w.indptr[i + 1]])
        if quota is not None:
            quota.take(i, step)
        step += 1
        progress.update()
    progress.close()
    log.info("iterit greedy: %d picks, %d re-evaluations, %.1fs", step, evaluations, time.perf_counter() - started)
    return order[:step], picked_gain[:step], picked_score[:step]


def select_iterit(req: Request) -> Selection:
    """IterIT: IFD x response n-gram diversity, over IFD-eligible samples."""
    if req.features is None:
        raise ValueError("selector 'iterit' needs features= (TF-IDF rows as a scipy CSR matrix, one per sample)")
    w = check_features(req.features)
    if w.shape[0] != req.n:
        raise ValueError(f"features has {w.shape[0]} rows but there are {req.n} samples")
    eligible, reason = ifd_eligibility(req.ifd, req.ifd_max)
    ifd = np.asarray(req.ifd, dtype=np.float64)
    quota = req.quota()
    order, gain, score = lazy_greedy(w, ifd, np.flatnonzero(eligible), tie_ranks(req.ids), req.n_rank, req.gamma,
                                     quota=quota)
    k = min(req.k, len(order))
    reason = quota.label(reason, order[:k]) if quota else reason
    return Selection("iterit", order, k, gain, score, reason, no_duplicates(req.n))
