"""Embedding diversity (docs/methods.md, The embedding variant): weighted k-center greedy, with
FAISS and de-duplication.

    repeat n_rank times:  pick i* = argmax over unpicked eligible i of  weight(i) * D(i | S)
                          D(i | S) = 1 - max(floor, max cosine of i to S)

weight = IFD and floor = 0 for the IterIT FAISS variant (D = 1 while S is empty, as specified; a
negative similarity counts as unrelated, which keeps D non-increasing). weight = 1 and floor = -1
is classic farthest-point k-center. D only falls as S grows, so the same lazy greedy applies: a
heap of stale bounds, where each sample remembers its max similarity to the first t picks; a stale
sample is brought up to date against the picks made since (S[t:] only), in batches.

Exactness. Vectors are L2-normalised, scaled to a norm just under 1 and rounded to multiples of
2**-12. Then every partial sum of an inner product is a multiple of 2**-24 below 1 in magnitude,
which float32 holds exactly: a similarity has the same bits however it is computed (any BLAS
blocking, any batch, FAISS or NumPy, CPU or GPU). Cosines move by about 1e-4 from the rounding.

De-duplication: a candidate whose max similarity to the picks ranked before it exceeds
`dedup_threshold` is never picked; it gets reason `duplicate` and the position of its most similar
ranked pick (ties: the earliest). After ranking, every remaining candidate is checked against the
whole ranked set, so the labels do not depend on how far the lazy search looked.

On a machine with GPUs (faiss.get_num_gpus() > 0) the picks live in a FAISS GPU index and stale
samples are searched against all of them; on CPU, NumPy matrix products over S[t:] only do less
work than a FAISS index over all of S (measured: see benchmarks/selection.py).
"""

from __future__ import annotations

import heapq
import logging
import time

import numpy as np

from raysel.progress import Progress
from raysel.selection.base import DUPLICATE, Quota, Request, Selection, ifd_eligibility, no_reasons, tie_ranks

log = logging.getLogger(__name__)

GRID = 2.0**-12  # embedding components are rounded to multiples of this


def quantize(embeddings: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """L2-normalise rows (float16/32 in, float32 out, in chunks) and round them to the exact grid.

    Rows are scaled to norm `shrink` first, so that after rounding (each component moves by at most
    GRID / 2) the norm stays below 1; the similarity is then divided by shrink**2 (see similarity_scale).
    """
    n, d = embeddings.shape
    shrink = _shrink(d)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        x = np.asarray(embeddings[start:start + chunk], dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"embeddings rows {start}..{start + len(x) - 1} hold NaN or infinity")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x * (shrink / np.where(norms > 0, norms, 1.0))
        out[start:start + chunk] = np.round(x / GRID) * GRID
    return out


def _shrink(d: int) -> float:
    """Norm to scale rows to: after rounding, the norm is at most shrink + sqrt(d) * GRID / 2 < 1."""
    shrink = 1.0 - np.sqrt(d) * GRID / 2 - 2**-10
    if shrink < 0.5:
        raise ValueError(f"embedding dimension {d} is too large for exact similarities (at most 2**20)")
    return float(shrink)


def similarity_scale(d: int) -> np.float32:
    return np.float32(1.0 / _shrink(d) ** 2)


class SelectedSet:
    """The picks so far (quantised vectors), answering "max similarity to S[since:]" for a batch.

    backend: "numpy" (matrix products over S[since:]), "faiss" (a FAISS IndexFlatIP over all of S),
    "faiss-gpu" (the same index on the GPU); None: faiss-gpu when FAISS sees a GPU, else numpy.
    """

    def __init__(self, d: int, capacity: int, backend: str | None = None):
        import faiss

        if backend is None:
            backend = "faiss-gpu" if faiss.get_num_gpus() > 0 else "numpy"
        if backend not in ("numpy", "faiss", "faiss-gpu"):
            raise ValueError(f"backend {backend!r} is not known; choose numpy, faiss or faiss-gpu")
        self.backend = backend
        self.vectors = np.zeros((max(capacity, 1), d), dtype=np.float32)
        self.size = 0
        self.scale = similarity_scale(d)
        self.index = None
        if backend == "faiss":
            self.index = faiss.IndexFlatIP(d)
        elif backend == "faiss-gpu":
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.GpuIndexFlatIP(self._resources, d)

    def add(self, vector: np.ndarray) -> None:
        self.vectors[self.size] = vector
        self.size += 1
        if self.index is not None:
            self.index.add(vector[None, :])

    def max_sim(self, queries: np.ndarray, since: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(max similarity, position of the earliest most similar pick) of each query over S[since_q:].

        A query with since_q == size gets (-inf, -1). A FAISS index searches the whole of S, which
        gives the same maximum (S[:since] was already counted) and a most similar pick.
        """
        sims = np.full(len(queries), -np.inf, dtype=np.float32)
        nearest = np.full(len(queries), -1, dtype=np.int64)
        todo = np.flatnonzero(since < self.size)
        if len(todo) == 0:
            return sims, nearest
        if self.index is not None:
            d, i = self.index.search(queries[todo], 1)
            sims[todo], nearest[todo] = d[:, 0] * self.scale, i[:, 0]
            return sims, nearest
        for group in _groups_by_start(since[todo]):
            rows = todo[group]
            lo = int(since[rows].min())
            with _blas_threads_for(len(rows) * (self.size - lo) * queries.shape[1]):
                block = queries[rows] @ self.vectors[lo:self.size].T  # exact: see the module docstring
            best = np.argmax(block, axis=1)  # first occurrence: the earliest pick on ties
            sims[rows] = block[np.arange(len(rows)), best] * self.scale
            nearest[rows] = best + lo
        return sims, nearest


SPAN_PER_ROW = 16  # a stale sample behind by s picks is caught up with about s / 16 others
BIG_PRODUCT = 2**26  # multiply-adds: below this one BLAS thread is faster (thread start-up, shared cores)
_BLAS: dict = {}


def _blas():
    if "controller" not in _BLAS:
        from threadpoolctl import ThreadpoolController

        controller = ThreadpoolController().select(user_api="blas")
        _BLAS["controller"] = controller
        _BLAS["threads"] = max([lib.num_threads for lib in controller.lib_controllers] or [1])
    return _BLAS["controller"]


def one_blas_thread():
    """Run the greedy loop with one BLAS thread: most of its products are small."""
    return _blas().limit(limits=1)


def _blas_threads_for(work: int):
    """Inside one_blas_thread(): give a big product the BLAS threads the process started with."""
    import contextlib

    return _blas().limit(limits=_BLAS["threads"]) if work >= BIG_PRODUCT else contextlib.nullcontext()


def _groups_by_start(since: np.ndarray, n_groups: int = 4) -> list[np.ndarray]:
    """Split queries into a few groups of similar start; each group is searched from its lowest start.

    Searching a query over a few picks it has already seen is harmless (max is idempotent), so the
    grouping only trades wasted products against the number of matrix products.
    """
    if len(since) <= 64 or since.min() == since.max():
        return [np.arange(len(since))]
    order = np.argsort(since, kind="stable")
    return [g for g in np.array_split(order, n_groups) if len(g)]


def lazy_embedding_greedy(q: np.ndarray, weight: np.ndarray, candidates: np.ndarray, tie_rank: np.ndarray,
                          n_rank: int, *, floor: float = 0.0, dedup_threshold: float | None = None,
                          backend: str | None = None, max_batch: int = 8192, quota: Quota | None = None):
    """Rank up to n_rank candidates. q: quantize()d vectors; weight >= 0 (IFD, or 1 for k-center);
    quota: mixture quotas for the first quota.k picks (as in greedy.lazy_greedy).

    Returns (order, D at pick, score at pick, duplicate_of) where duplicate_of holds, per index, the
    position in `order` of the ranked sample it duplicates, or -1.
    """
    n_rank = min(int(n_rank), len(candidates))
    picks = SelectedSet(q.shape[1], n_rank, backend)
    best = np.full(len(q), floor, dtype=np.float32)  # max(floor, max similarity to S[:seen])
    nearest = np.full(len(q), -1, dtype=np.int64)
    seen = np.zeros(len(q), dtype=np.int64)  # how many picks `best` accounts for
    keys = -(weight[candidates].astype(np.float64) * (1.0 - np.float64(np.float32(floor))))
    heap = list(zip(keys.tolist(), tie_rank[candidates].tolist(), candidates.tolist(), strict=True))
    heapq.heapify(heap)
    with one_blas_thread():
        order, gains, scores = _rank(picks, q, weight, heap, n_rank, best, nearest, seen, dedup_threshold,
                                     max_batch, quota)
    duplicate_of = np.full(len(q), -1, dtype=np.int64)
    if dedup_threshold is not None:
        duplicate_of = _label_duplicates(picks, q, candidates, order, best, nearest, seen, dedup_threshold)
    return order, gains, scores, duplicate_of


def _rank(picks, q, weight, heap, n_rank, best, nearest, seen, dedup_threshold, max_batch, quota):
    """The lazy greedy loop proper (see the module docstring)."""
    order, gains, scores, passed_over = [], [], [], []
    evaluations, started = 0, time.perf_counter()
    progress = Progress(n_rank, "embedding greedy", "picks")
    while len(order) < n_rank:
        step, batch_size = len(order), 1
        if quota is not None and step == quota.k:  # the quotas bind the selection only
            for entry in passed_over:
                heapq.heappush(heap, entry)
            passed_over = []
        while heap and seen[heap[0][2]] != step:
            # Catching up reads S[seen:] once per batch: rows that are far behind come in bigger batches
            # (a matrix product instead of many vector products); catching up early costs no extra work.
            batch_size = max(batch_size, min(max_batch, (step - int(seen[heap[0][2]])) // SPAN_PER_ROW))
            stale = []
            while heap and len(stale) < batch_size and seen[heap[0][2]] != step:
                stale.append(heapq.heappop(heap))
            rows = np.fromiter((e[2] for e in stale), dtype=np.int64, count=len(stale))
            _catch_up(picks, q, rows, best, nearest, seen)
            evaluations += len(rows)
            keys = -(weight[rows].astype(np.float64) * (1.0 - best[rows].astype(np.float64)))
            # similarity to S only grows: a duplicate stays one (labelled at the end), so drop it now
            keep = best[rows] <= dedup_threshold if dedup_threshold is not None else np.ones(len(rows), bool)
            for key, (_, tie, i), kept in zip(keys.tolist(), stale, keep.tolist(), strict=True):
                if kept:
                    heapq.heappush(heap, (key, tie, i))
            batch_size = min(2 * batch_size, max_batch)
        if not heap:
            break  # every remaining candidate duplicates a pick (or its group is full)
        if quota is not None and not quota.admits(heap[0][2], step):
            quota.pass_over(heap[0][2])
            passed_over.append(heapq.heappop(heap))
            continue
        neg_score, _, i = heapq.heappop(heap)
        if quota is not None:
            quota.take(i, step)
        order.append(i)
        gains.append(1.0 - float(best[i]))
        scores.append(-neg_score)
        picks.add(q[i])
        progress.update()
    progress.close()
    log.info("embedding greedy: %d picks, %d re-evaluations, %.1fs", len(order), evaluations,
             time.perf_counter() - started)
    return np.asarray(order, dtype=np.int64), np.asarray(gains, dtype=np.float64), np.asarray(scores)


def _catch_up(picks: SelectedSet, q: np.ndarray, rows: np.ndarray, best: np.ndarray, nearest: np.ndarray,
              seen: np.ndarray) -> None:
    """Bring best/nearest of `rows` up to date with every pick so far."""
    sims, pos = picks.max_sim(q[rows], seen[rows])
    higher = sims > best[rows]
    tie_earlier = (sims == best[rows]) & (pos >= 0) & ((nearest[rows] < 0) | (pos < nearest[rows]))
    take = higher | tie_earlier
    best[rows[higher]] = sims[higher]
    nearest[rows[take]] = pos[take]
    seen[rows] = picks.size


def _label_duplicates(picks, q, candidates, order, best, nearest, seen, threshold, chunk: int = 4096):
    """Check every unranked candidate against the whole ranked set; return duplicate_of per index."""
    started = time.perf_counter()
    ranked = np.zeros(len(q), dtype=bool)
    ranked[order] = True
    rest = candidates[~ranked[candidates]]
    with one_blas_thread():
        for s in range(0, len(rest), chunk):
            _catch_up(picks, q, rest[s:s + chunk], best, nearest, seen)
    duplicate_of = np.full(len(q), -1, dtype=np.int64)
    dup = rest[best[rest] > threshold]
    duplicate_of[dup] = nearest[dup]
    log.info("duplicates: %d of %d unranked candidates (checked in %.1fs)", len(dup), len(rest),
             time.perf_counter() - started)
    return duplicate_of


def select_embedding(req: Request) -> Selection:
    """The IterIT FAISS variant: IFD x (1 - max cosine to the picks), over IFD-eligible samples."""
    q = quantize(needed_embeddings(req, "embedding"))
    eligible, reason = ifd_eligibility(req.ifd, req.ifd_max)
    ifd = np.asarray(req.ifd, dtype=np.float64)
    quota = req.quota()
    order, gain, score, dup = lazy_embedding_greedy(q, ifd, np.flatnonzero(eligible), tie_ranks(req.ids),
                                                    req.n_rank, floor=0.0, dedup_threshold=req.dedup_threshold,
                                                    quota=quota)
    return _selection("embedding", req, order, gain, score, reason, dup, quota)


def select_kcenter(req: Request) -> Selection:
    """Farthest-point k-center on the embeddings, every sample a candidate, no IFD; starts at the lowest id."""
    q = quantize(needed_embeddings(req, "kcenter"))
    quota = req.quota()
    order, gain, score, dup = lazy_embedding_greedy(q, np.ones(req.n), np.arange(req.n), tie_ranks(req.ids),
                                                    req.n_rank, floor=-1.0, dedup_threshold=req.dedup_threshold,
                                                    quota=quota)
    return _selection("kcenter", req, order, gain, score, no_reasons(req.n), dup, quota)


def needed_embeddings(req: Request, method: str) -> np.ndarray:
    if req.embeddings is None:
        raise ValueError(f"selector {method!r} needs embeddings= (an (n, d) float array, one row per sample)")
    if req.embeddings.ndim != 2 or len(req.embeddings) != req.n:
        raise ValueError(f"embeddings must have shape ({req.n}, d); got {req.embeddings.shape}")
    return req.embeddings


def _selection(method, req, order, gain, score, reason, dup_position, quota) -> Selection:
    duplicate_of = np.where(dup_position >= 0, order[np.maximum(dup_position, 0)] if len(order) else -1, -1)
    k = min(req.k, len(order))
    reason = quota.label(reason, order[:k]) if quota else reason.copy()
    reason[duplicate_of >= 0] = DUPLICATE
    return Selection(method, order, k, gain, score, reason, duplicate_of.astype(np.int64))
