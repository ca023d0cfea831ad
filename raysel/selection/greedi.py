"""Selection past one machine: the distributed two-stage greedy (GreeDi; Mirzasoleiman et al.,
NeurIPS 2013) for IterIT's objective (TF-IDF diversity) and its embedding variant.

    shards = plan_shards(list_pieces(folder), shard_rows)       # Parquet row groups, <= shard_rows rows each
    source = Source("tfidf", idf_of(shards, n_features), n_features)
    ranking = greedi(shards, source, Lookup.of(ids, ifd), "iterit", n_rank, Params(), shard_rows)

1. The candidates' features lie in Parquet files (hashed n-gram counts written by Ray Data, or the
   scorer's embeddings); their row groups are grouped into shards of at most `shard_rows` rows.
2. A Ray task per shard reads its rows, keeps the candidates, and ranks their best n_rank with the
   exact lazy greedy (greedy.py, embedding.py). The winners (ids, IFD, feature rows) stay in the
   object store; the driver learns only how many there are.
3. The union of the winners is ranked the same way in one task. When the union is itself larger
   than a shard, groups of winners are merged and ranked first (a tree of merges), so no task ever
   holds much more than a shard and the driver holds only ids and scores.

The objective of a ranking is the greedy's own: the sum of IFD x D at pick time over its picks.
GreeDi's guarantee for monotone submodular objectives is a constant factor; in practice it is near
1 when a shard's n_rank winners cover what the shard has to offer (benchmarks/selection.py
measures the ratio against the exact greedy at a million rows).

Ties and eligibility follow the exact greedy: the lookup holds only eligible candidates (finite
IFD below ifd_max), and a shard's tie order is the global id order restricted to it. With one
shard (and no quotas) the result is the exact greedy's ranking. Mixture quotas bind every level:
shards and merges keep their n_rank winners within the quotas' shares of n_rank, and the final
ranking's first k within the shares of k.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import scipy.sparse as sp

from raysel.selection.base import QUOTA_FULL

log = logging.getLogger(__name__)


# --- what a task holds ----------------------------------------------------------------------------

@dataclass
class Shard:
    """Candidates in one process: ids, IFD, and their feature rows (CSR TF-IDF rows or an
    (n, d) float array of embeddings)."""

    ids: np.ndarray
    ifd: np.ndarray
    rows: object
    groups: np.ndarray | None = None  # quota labels (selection.quota_field)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Shard:
        groups = None if self.groups is None else self.groups[index]
        return Shard(self.ids[index], self.ifd[index], self.rows[index], groups)

    @staticmethod
    def concat(parts: list[Shard]) -> Shard:
        rows = [p.rows for p in parts]
        joined = sp.vstack(rows, format="csr") if sp.issparse(rows[0]) else np.concatenate(rows)
        groups = None if parts[0].groups is None else np.concatenate([p.groups for p in parts])
        return Shard(np.concatenate([p.ids for p in parts]), np.concatenate([p.ifd for p in parts]), joined, groups)


@dataclass(frozen=True)
class Params:
    """The greedy's settings, as select() takes them."""

    gamma: float = 0.1
    ifd_max: float = 1.0
    dedup_threshold: float | None = None
    quotas: dict | None = None  # mixture quotas over the lookup's groups


@dataclass
class Lookup:
    """The eligible candidates' ids (sorted), IFD, and which source file holds each one's
    features (several files, newest first: a row's newest vector counts). Put in the object store
    once; every task matches its rows against it."""

    ids: np.ndarray  # fixed-width str, sorted
    ifd: np.ndarray  # float64
    source: np.ndarray  # int16: index of the file that holds the row's features
    groups: np.ndarray | None = None  # quota labels

    @classmethod
    def of(cls, ids, ifd, source=None, groups=None) -> Lookup:
        ids = np.asarray(ids, dtype=str)
        order = np.argsort(ids, kind="stable")
        source = np.zeros(len(ids), np.int16) if source is None else np.asarray(source, np.int16)
        groups = None if groups is None else np.asarray(groups, dtype=object)[order]
        return cls(ids[order], np.asarray(ifd, dtype=np.float64)[order], source[order], groups)

    def match(self, ids: np.ndarray, source: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(mask of the ids that are candidates whose features come from `source`, their IFD and groups)."""
        ids = np.asarray(ids, dtype=str)
        if len(self.ids) == 0:
            return np.zeros(len(ids), bool), np.empty(0), None
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        mask = (self.ids[pos] == ids) & (self.source[pos] == source)
        return mask, self.ifd[pos[mask]], None if self.groups is None else self.groups[pos[mask]]


@dataclass(frozen=True)
class Piece:
    """Some row groups of one Parquet file."""

    path: str
    row_groups: tuple[int, ...]
    rows: int
    source: int = 0  # which of the sources (newest first) the file belongs to


@dataclass(frozen=True)
class Source:
    """How a shard's rows become features. kind `tfidf`: files of hashed n-gram counts (columns
    id, indices, counts; see features.write_hashed_counts) weighted by `idf`; kind `embedding`:
    files with columns id, embedding (fixed-size lists), as the scoring stage writes them."""

    kind: str
    idf: object = None  # float64 (n_features,), or an object ref to it
    n_features: int = 0


# --- planning -----------------------------------------------------------------------------------

def list_pieces(paths, source: int = 0) -> list[Piece]:
    """Every row group of the Parquet files under `paths` (a file or a folder, or a list of them)."""
    import pyarrow.parquet as pq

    if isinstance(paths, str | Path):
        paths = [paths]
    out = []
    for path in paths:
        path = Path(path)
        files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        for f in files:
            meta = pq.ParquetFile(f).metadata
            out += [Piece(str(f), (g,), meta.row_group(g).num_rows, source) for g in range(meta.num_row_groups)]
    return out


def plan_shards(pieces: list[Piece], shard_rows: int) -> list[list[Piece]]:
    """Consecutive pieces grouped into shards of at most shard_rows rows (a bigger row group is a
    shard of its own). Row groups of one file in one shard are read in one call."""
    shards, current, size = [], [], 0
    for p in pieces:
        if current and size + p.rows > shard_rows:
            shards.append(current)
            current, size = [], 0
        current.append(p)
        size += p.rows
    if current:
        shards.append(current)
    return [_merge_pieces(s) for s in shards]


def _merge_pieces(pieces: list[Piece]) -> list[Piece]:
    by_file: dict = {}
    for p in pieces:
        groups, rows = by_file.get((p.path, p.source), ((), 0))
        by_file[(p.path, p.source)] = (groups + p.row_groups, rows + p.rows)
    return [Piece(path, groups, rows, source) for (path, source), (groups, rows) in by_file.items()]


# --- one shard (pure: no Ray) --------------------------------------------------------------------

def load_shard(pieces: list[Piece], source: Source, lookup: Lookup) -> Shard:
    """The candidates among the pieces' rows, with their features."""
    import pyarrow.parquet as pq

    parts = []
    for p in pieces:
        columns = ["id", "indices", "counts"] if source.kind == "tfidf" else ["id", "embedding"]
        table = pq.ParquetFile(p.path).read_row_groups(list(p.row_groups), columns=columns)
        mask, ifd, groups = lookup.match(table.column("id").to_numpy(zero_copy_only=False), p.source)
        table = table.filter(mask)
        ids = np.asarray(table.column("id").to_pylist(), dtype=str)
        rows = _tfidf_rows(table, source) if source.kind == "tfidf" else _vectors(table)
        parts.append(Shard(ids, ifd, rows, groups))
    return Shard.concat(parts)


def _tfidf_rows(table, source: Source) -> sp.csr_matrix:
    from raysel.selection.features import tfidf_rows

    indices = table.column("indices").combine_chunks()
    offsets = indices.offsets.to_numpy().astype(np.int64)
    indptr = offsets - offsets[0]
    cols = indices.flatten().to_numpy()
    counts = table.column("counts").combine_chunks().flatten().to_numpy()
    data = tfidf_rows(indptr, cols, counts, np.asarray(source.idf))
    return sp.csr_matrix((data, cols.astype(np.int32), indptr), shape=(len(indptr) - 1, source.n_features))


def _vectors(table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def rank_shard(shard: Shard, name: str, n_rank: int, params: Params, k: int | None = None):
    """The exact lazy greedy over one shard: its first k picks (default n_rank) within the quotas,
    ranked on to n_rank. Returns (its ranked rows, best first, as a Shard; the Selection)."""
    from raysel.selection import select

    if len(shard) == 0:
        return shard, None
    features = shard.rows if name == "iterit" else None
    embeddings = shard.rows if name == "embedding" else None
    sel = select(name, shard.ifd, n_rank if k is None else k, n_rank, ids=shard.ids, features=features,
                 embeddings=embeddings, gamma=params.gamma, ifd_max=params.ifd_max,
                 dedup_threshold=params.dedup_threshold, groups=shard.groups, quotas=params.quotas)
    return shard.take(sel.order), sel


def duplicates_in(shard: Shard, ranked_ids: np.ndarray, ranked: np.ndarray, threshold: float,
                  chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the shard's unranked rows whose max similarity to a ranked vector exceeds the
    threshold, the position of that most similar ranked vector; ties: the earliest): the exact
    greedy's de-duplication labels, computed shard by shard."""
    from raysel.selection.embedding import quantize, similarity_scale

    rest = np.flatnonzero(~np.isin(shard.ids, ranked_ids))
    if len(rest) == 0 or len(ranked) == 0:
        return np.empty(0, str), np.empty(0, np.int64)
    q_ranked, scale = quantize(ranked), similarity_scale(ranked.shape[1])
    dup_ids, dup_of = [], []
    for s in range(0, len(rest), chunk):
        rows = rest[s:s + chunk]
        sims = quantize(shard.rows[rows]) @ q_ranked.T  # exact: see embedding.py
        best = np.argmax(sims, axis=1)
        hit = sims[np.arange(len(rows)), best] * scale > threshold
        dup_ids.append(shard.ids[rows[hit]])
        dup_of.append(best[hit])
    return np.concatenate(dup_ids), np.concatenate(dup_of).astype(np.int64)


def objective(scores: np.ndarray, k: int) -> float:
    """The greedy's value of a ranking's first k picks: the sum of their scores at pick time."""
    return float(np.sum(scores[:k], dtype=np.float64))


# --- Ray ------------------------------------------------------------------------------------------

@dataclass
class Ranking:
    """The final ranking: ids best first, D and score at pick; duplicates (embedding de-duplication):
    id -> position in `ids` of the ranked row it repeats."""

    ids: np.ndarray
    diversity: np.ndarray
    score: np.ndarray
    duplicates: dict = field(default_factory=dict)
    quota_full: np.ndarray = field(default_factory=lambda: np.empty(0, str))  # ids passed over by quotas
    stats: dict = field(default_factory=dict)


def greedi(shards: list[list[Piece]], source: Source, lookup: Lookup, name: str, n_rank: int, params: Params,
           shard_rows: int, k: int | None = None) -> Ranking:
    """GreeDi over the shards (see the module docstring); tasks run on the Ray session. With quotas,
    shards and merges keep n_rank winners within quotas of n_rank; the final ranking's first k
    (default n_rank) honour the quotas of k, as the exact greedy's do."""
    if name not in ("iterit", "embedding"):
        raise ValueError(f"the distributed greedy ranks 'iterit' and 'embedding', not {name!r}")
    if shard_rows < 2 * n_rank:
        raise ValueError(f"shard_rows ({shard_rows}) must be at least twice the rows ranked ({n_rank}), "
                         "so that merging the shards' winners shrinks them")
    started = time.perf_counter()
    if not shards or not len(lookup.ids):  # no candidate
        return Ranking(np.empty(0, str), np.empty(0), np.empty(0), stats={"greedi_shards": 0})
    lookup_ref = ray.put(lookup)
    if source.kind == "tfidf":
        source = Source(source.kind, ray.put(np.asarray(source.idf)), source.n_features)
    refs, sizes = _run([_first.remote(s, source, lookup_ref, name, n_rank, params) for s in shards], "greedi shards")
    levels = [len(shards)]
    while sum(sizes) > shard_rows and len(refs) > 1:
        groups = _group(sizes, shard_rows)
        refs, sizes = _run([_merge.remote(name, n_rank, params, *[refs[i] for i in g]) for g in groups],
                           "greedi merges")
        levels.append(len(groups))
    ids, diversity, score, ranked_vectors, quota_full = ray.get(_final.remote(name, n_rank, params, k, *refs))
    duplicates = {}
    if name == "embedding" and params.dedup_threshold is not None:
        duplicates = _label(shards, source, lookup_ref, ids, ranked_vectors, params.dedup_threshold)
    stats = {"greedi_shards": len(shards), "greedi_merges": levels[1:], "greedi_union": int(sum(sizes)),
             "greedi_s": round(time.perf_counter() - started, 3)}
    log.info("greedi: %d shards, merges %s, %d winners in the final union, %d ranked in %.1fs", len(shards),
             levels[1:], sum(sizes), len(ids), stats["greedi_s"])
    return Ranking(ids, diversity, score, duplicates, quota_full, stats)


def idf_of(shards: list[list[Piece]], n_features: int) -> np.ndarray:
    """The idf over every row of the hashed-count files (one task per shard counts its document
    frequencies; the driver sums one vector of n_features)."""
    from raysel.selection.features import idf_from_df

    df, n = np.zeros(n_features, dtype=np.int64), 0
    pending = [_document_frequencies.remote(s) for s in shards]
    while pending:  # one shard's counts in the driver at a time
        [done], pending = ray.wait(pending, num_returns=1)
        cols, counts, rows = ray.get(done)
        df[cols] += counts
        n += rows
        del done, cols, counts
    return idf_from_df(df, n)


@ray.remote
def _document_frequencies(pieces):
    import pyarrow.parquet as pq

    cols, rows = [], 0
    for p in pieces:
        indices = pq.ParquetFile(p.path).read_row_groups(list(p.row_groups), columns=["indices"]).column("indices")
        cols.append(indices.combine_chunks().flatten().to_numpy())  # a row's columns are unique
        rows += len(indices)
    unique, counts = np.unique(np.concatenate(cols) if cols else np.empty(0, np.int32), return_counts=True)
    return unique.astype(np.int64), counts.astype(np.int64), rows


def _run(tasks: list, what: str) -> tuple[list, list[int]]:
    """Wait for a level's tasks, with progress; (their winners' refs, the winner counts)."""
    from raysel.progress import Progress

    refs, counts = [t[0] for t in tasks], [t[1] for t in tasks]
    progress, pending = Progress(len(tasks), what, "tasks"), list(counts)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        progress.update(len(done))
    progress.close()
    return refs, ray.get(counts)


def _group(sizes: list[int], shard_rows: int) -> list[list[int]]:
    """Consecutive winner sets grouped to at most shard_rows rows, at least two a group (so the
    sets shrink: each holds at most n_rank <= shard_rows / 2 rows)."""
    groups, current, total = [], [], 0
    for i, n in enumerate(sizes):
        if len(current) >= 2 and total + n > shard_rows:
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    groups.append(current)
    return groups


def _resolved(source: Source) -> Source:
    """The source with its idf fetched (it travels as one object-store reference)."""
    if isinstance(source.idf, ray.ObjectRef):
        return Source(source.kind, ray.get(source.idf), source.n_features)
    return source


@ray.remote(num_returns=2)
def _first(pieces, source, lookup, name, n_rank, params):
    winners, _ = rank_shard(load_shard(pieces, _resolved(source), lookup), name, n_rank, params)
    return winners, len(winners)


@ray.remote(num_returns=2)
def _merge(name, n_rank, params, *parts):
    winners, _ = rank_shard(Shard.concat(list(parts)), name, n_rank, params)
    return winners, len(winners)


@ray.remote
def _final(name, n_rank, params, k, *parts):
    union = Shard.concat(list(parts))
    winners, sel = rank_shard(union, name, n_rank, params, k)
    if sel is None:
        return winners.ids, np.empty(0), np.empty(0), None, np.empty(0, str)
    quota_full = union.ids[sel.reason == QUOTA_FULL]  # passed over for the selection by a full quota
    return winners.ids, sel.diversity, sel.score, winners.rows if name == "embedding" else None, quota_full


@ray.remote
def _duplicates(pieces, source, lookup, ranked_ids, ranked_vectors, threshold):
    return duplicates_in(load_shard(pieces, _resolved(source), lookup), ranked_ids, ranked_vectors, threshold)


def _label(shards, source, lookup_ref, ranked_ids, ranked_vectors, threshold) -> dict:
    """De-duplication labels of every unranked candidate, shard by shard."""
    ids_ref, vectors_ref = ray.put(ranked_ids), ray.put(ranked_vectors)
    labels = ray.get([_duplicates.remote(s, source, lookup_ref, ids_ref, vectors_ref, threshold) for s in shards])
    return {i: p for ids, pos in labels for i, p in zip(ids.tolist(), pos.tolist(), strict=True)}
