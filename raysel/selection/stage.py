"""The selection stage: rows.parquet + round-R/scores.parquet -> round-R/selection.parquet, selected.jsonl.

    summary = select_round(run / "rows.parquet", run / "round-0/scores.parquet", run / "round-0",
                           "iterit", cfg.iterit, k=500, n_rank=1500, seed=0)
    ranked, selected = ranked_ids(run / "round-0/selection.parquet")

    raysel select --run-dir runs/x --round 0 --set selection.k=500     # the same, by hand

It reads only the columns it needs (never the pool's text into the driver on the Ray path: hashed
features are computed by Ray Data when a Ray session is up). selection.parquet has one row per row
of rows.parquet, nothing dropped:

    id
    <score columns>            every float and string column of the scores (IFD: ifd, l_cond,
                               l_prior; DaaR: reward, entropy, pseudo_domain; null where the row
                               was not scored); none for methods without scores
    diversity, score           diversity gain at pick time and the ranking score (ranked rows only)
    selected, rank             rank: 0 = best, over the ranked rows (the first k are selected)
    reason                     null when selected; else "invalid: <ingestion reason>",
                               "not in re-score pool", "unscored: <scoring reason>", "ifd>=max",
                               "ifd invalid", "reward invalid", "duplicate", "not selected"
    duplicate_of               the id of the ranked sample a duplicate repeats

selected.jsonl holds the selected rows' original records (`raw`), best first.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from raysel.config import IterITConfig, UserError
from raysel.runs import SELECTED_FILE, SELECTION_FILE, atomic_output
from raysel.selection import Selection, get_selector, select, selector_name
from raysel.selection.base import DUPLICATE, QUOTA_FULL, ifd_eligibility, quota_cap

RAY_FEATURIZE_MIN_ROWS = 50_000  # below this, hashed features are computed in the driver

COMMON_COLUMNS = [  # after `id` and the method's own score columns
    ("diversity", pa.float64()), ("score", pa.float64()), ("selected", pa.bool_()), ("rank", pa.int64()),
    ("reason", pa.string()), ("duplicate_of", pa.string()),
]
KEY_COLUMNS = ("id", "status", "reason")  # of a scores file; its float and string columns are the scores


def selection_schema(score_types: dict[str, pa.DataType]) -> pa.Schema:
    return pa.schema([("id", pa.string()), *score_types.items(), *COMMON_COLUMNS])


def select_round(rows_path, scores_path, out_dir, method: str, params: IterITConfig, k: int, n_rank: int,
                 seed: int, candidate_ids=None, embeddings=None, use_ray: bool | None = None,
                 options: dict | None = None, mixture: tuple[str, dict] | None = None) -> dict:
    """Select k rows (ranking n_rank) and write selection.parquet and selected.jsonl into out_dir.

    scores_path: a parquet file or a folder of them (None only for random and full), or a list
    of them, newest first: each row's newest score counts. candidate_ids: the re-score pool
    (None: every valid row). embeddings: for the embedding diversity and kcenter, the round's
    embedding files, newest first (or an (ids, matrix) pair).
    use_ray: featurise with Ray Data (default: if a session is up). options: the selector's own
    settings (daar: mode, shares). mixture: (quota_field, quotas), the mixture quotas every
    method honours (config.SelectionConfig).
    Returns a summary: counts per reason (and per quota group), mean IFD of the selection and of
    the pool, timings.
    """
    started = time.perf_counter()
    r = _rank(rows_path, scores_path, method, params, k, n_rank, seed, candidate_ids, embeddings, use_ray,
              options, mixture)
    table = _selection_table(r.rows, r.scores, r.pool, r.sel)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / SELECTION_FILE) as tmp:
        pq.write_table(table, tmp)
    _write_selected(rows_path, r.pool_ids[r.sel.selected], out_dir / SELECTED_FILE)
    return _summary(r.name, table, r.pool, r.sel, r.t_features, r.t_select, time.perf_counter() - started,
                    mixture)


def rank_pool(rows_path, scores_path, method: str, params: IterITConfig, n_rank: int, seed: int,
              embeddings=None, use_ray: bool | None = None, mixture: tuple[str, dict] | None = None) -> list[str]:
    """The n_rank best valid rows, best first, ranked as select_round ranks them (quotas as shares
    of n_rank); writes nothing. The rolling re-score pool: ranked over every row's newest score."""
    r = _rank(rows_path, scores_path, method, params, n_rank, n_rank, seed, None, embeddings, use_ray, None,
              mixture)
    return r.pool_ids[r.sel.order].tolist()


@dataclass
class _Ranking:
    name: str
    rows: dict
    scores: dict | None
    pool: _Pool
    pool_ids: np.ndarray
    sel: Selection
    t_features: float
    t_select: float


def _rank(rows_path, scores_path, method: str, cfg: IterITConfig, k, n_rank, seed, candidate_ids, embeddings,
          use_ray, options, mixture) -> _Ranking:
    name = selector_name(method, cfg.diversity)
    needs = get_selector(name)
    rows = _read_rows(rows_path)
    scores = _read_scores(scores_path, name, needs.scores)
    pool = _pool(rows, scores, candidate_ids)
    quotas = None
    if mixture:
        field, quotas = mixture
        pool.groups = read_groups(rows_path, field)[pool.index]
    if _distributed(name, cfg, pool):
        return _rank_greedi(rows_path, rows, scores, pool, name, cfg, k, n_rank, embeddings, quotas)
    pool_ids = rows["id"][pool.index]
    features, t_features = None, 0.0
    if needs.needs_features:
        t0 = time.perf_counter()
        features = _eligible_features(rows_path, rows, pool, cfg, use_ray)
        pool_ids = rows["id"][pool.index]
        t_features = time.perf_counter() - t0
    vectors = _aligned_embeddings(embeddings, pool_ids) if needs.needs_embeddings else None
    t0 = time.perf_counter()
    sel = select(name, pool.scores.get("ifd"), k, n_rank, ids=pool_ids, features=features, embeddings=vectors,
                 scores=pool.scores, gamma=cfg.diversity_decay, ifd_max=cfg.ifd_max,
                 dedup_threshold=cfg.dedup_threshold, seed=seed, options=options, groups=pool.groups, quotas=quotas)
    return _Ranking(name, rows, scores, pool, pool_ids, sel, t_features, time.perf_counter() - t0)


def _distributed(name: str, cfg: IterITConfig, pool: _Pool) -> bool:
    """Whether the distributed greedy (greedi.py) ranks: by option, or past the driver's budget."""
    if name not in ("iterit", "embedding") or cfg.greedy == "exact":
        return False
    return cfg.greedy == "greedi" or int(ifd_eligibility(pool.ifd, cfg.ifd_max)[0].sum()) > cfg.shard_rows


def _rank_greedi(rows_path, rows, scores, pool: _Pool, name: str, cfg: IterITConfig, k: int, n_rank: int,
                 embeddings, quotas: dict | None) -> _Ranking:
    """The ranking by GreeDi over shards of the candidates' features, which never enter the driver:
    hashed n-gram counts written by Ray Data next to rows.parquet (removed after), or the embedding
    files themselves."""
    import tempfile

    import pandas as pd

    from raysel.selection import greedi

    t0 = time.perf_counter()
    pool_ids = rows["id"][pool.index]
    eligible, reason = ifd_eligibility(pool.ifd, cfg.ifd_max)
    ids, ifd = pool_ids[eligible], pool.ifd[eligible]
    groups = None if pool.groups is None else pool.groups[eligible]
    with tempfile.TemporaryDirectory(dir=Path(rows_path).parent, prefix=".features-") as tmp:
        if name == "iterit":
            shards, source, lookup = _hashed_shards(rows_path, ids, ifd, groups, cfg, tmp)
        else:
            shards, source, lookup = _embedding_shards(embeddings, ids, ifd, groups, cfg)
        t_features = time.perf_counter() - t0
        params = greedi.Params(cfg.diversity_decay, cfg.ifd_max, cfg.dedup_threshold, quotas)
        ranking = greedi.greedi(shards, source, lookup, name, max(k, n_rank), params, cfg.shard_rows, k)
    at = pd.Index(pool_ids)
    order = np.asarray(at.get_indexer(ranking.ids), dtype=np.int64)
    duplicate_of = np.full(len(pool_ids), -1, dtype=np.int64)
    if ranking.duplicates:
        dup = np.asarray(at.get_indexer(list(ranking.duplicates)), dtype=np.int64)
        duplicate_of[dup] = order[np.fromiter(ranking.duplicates.values(), dtype=np.int64)]
        reason[dup] = DUPLICATE
    reason[at.get_indexer(ranking.quota_full.tolist())] = QUOTA_FULL
    sel = Selection(name, order, min(k, len(order)), ranking.diversity, ranking.score, reason, duplicate_of,
                    dict(ranking.stats))
    return _Ranking(name, rows, scores, pool, pool_ids, sel, t_features, time.perf_counter() - t0 - t_features)


def _hashed_shards(rows_path, ids, ifd, groups, cfg: IterITConfig, folder):
    """The candidates' hashed n-gram counts, written by Ray Data into `folder`, in shards; their idf."""
    import ray.data

    from raysel.selection import greedi
    from raysel.selection.features import BLOCK_SIZE, write_hashed_counts

    if cfg.features != "hashed":
        raise UserError("the distributed greedy needs iterit.features: hashed (a vocabulary is one machine's work)")
    # a block is a row group: small enough that shards come out near shard_rows
    write_hashed_counts(ray.data.read_parquet(str(rows_path)), folder, cfg.n_features, keep_ids=ids,
                        block_size=min(BLOCK_SIZE, max(1, cfg.shard_rows // 8)))
    shards = greedi.plan_shards(greedi.list_pieces(folder), cfg.shard_rows)
    source = greedi.Source("tfidf", greedi.idf_of(shards, cfg.n_features), cfg.n_features)
    return shards, source, greedi.Lookup.of(ids, ifd, groups=groups)


def _embedding_shards(embeddings, ids, ifd, groups, cfg: IterITConfig):
    """Shards of the embedding files' row groups; each candidate read from its newest file."""
    from raysel.selection import greedi

    if not isinstance(embeddings, list) or not embeddings:
        raise UserError("the distributed embedding greedy reads the embedding files: score with "
                        "scoring.embeddings=true")
    pieces = [p for i, f in enumerate(embeddings) for p in greedi.list_pieces(f, source=i)]
    lookup = greedi.Lookup.of(ids, ifd, _newest_file(embeddings, ids), groups)
    return greedi.plan_shards(pieces, cfg.shard_rows), greedi.Source("embedding"), lookup


def _newest_file(files: list[Path], ids: np.ndarray) -> np.ndarray:
    """Per id, the index of the first (newest) file that holds its embedding (-1: none)."""
    import pandas as pd

    source = np.full(len(ids), -1, dtype=np.int16)
    for i in reversed(range(len(files))):  # newer files overwrite older ones
        held = pq.read_table(files[i], columns=["id"]).column("id").to_pylist()
        source[pd.Index(ids).isin(held)] = i
    if (source < 0).any():
        raise UserError(f"{int((source < 0).sum())} candidate rows have no embedding (e.g. "
                        f"{ids[source < 0][0]!r}); re-score the round with scoring.embeddings=true")
    return source


def ranked_ids(selection_path) -> tuple[list[str], list[str]]:
    """(every ranked id, best first; the selected ids, best first) from a selection.parquet."""
    table = pq.read_table(selection_path, columns=["id", "rank", "selected"])
    rank = table.column("rank").to_numpy(zero_copy_only=False)
    ranked = np.flatnonzero(~np.isnan(rank.astype(np.float64)))
    ranked = ranked[np.argsort(rank[ranked].astype(np.int64), kind="stable")]
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    selected = np.asarray(table.column("selected").to_pylist(), dtype=bool)
    return ids[ranked].tolist(), ids[ranked[selected[ranked]]].tolist()


# --- reading -------------------------------------------------------------------------------------


def _read_rows(rows_path) -> dict[str, np.ndarray]:
    table = pq.read_table(rows_path, columns=["id", "status", "reason"])
    return {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in table.column_names}


def _read_scores(scores_path, name: str, needed: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """{id, status, reason, <every float score column>}; `needed`: the columns the method cannot do without."""
    if scores_path is None:
        if needed:
            raise UserError(f"selection method {name!r} needs scores: score the round first (raysel score)")
        return None
    if isinstance(scores_path, list | tuple):
        return newest_first([_read_score_file(p, needed) for p in scores_path])
    return _read_score_file(scores_path, needed)


def _read_score_file(scores_path, needed: tuple[str, ...]) -> dict[str, np.ndarray]:
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(scores_path), format="parquet")
    missing = {"id", "status", *needed} - set(dataset.schema.names)
    if missing:
        raise UserError(f"{scores_path}: scores lack the column(s) {sorted(missing)}")
    floats = [f.name for f in dataset.schema if pa.types.is_floating(f.type) and f.name not in KEY_COLUMNS]
    labels = [f.name for f in dataset.schema if pa.types.is_string(f.type) and f.name not in KEY_COLUMNS]
    table = dataset.to_table(columns=[c for c in KEY_COLUMNS if c in dataset.schema.names] + floats + labels)
    out = {c: np.asarray(table.column(c).to_pylist(), dtype=object)
           for c in (*KEY_COLUMNS, *labels) if c in table.column_names}
    out.setdefault("reason", np.full(table.num_rows, None, dtype=object))
    for c in floats:
        out[c] = table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
    if len(set(out["id"])) != table.num_rows:
        raise UserError(f"{scores_path}: an id is scored more than once")
    return out


def read_groups(rows_path, field: str, batch_rows: int = 65_536) -> np.ndarray:
    """Each row's value of `field` (a label; None where missing): a column of rows.parquet, or a
    field of the original records, parsed batch by batch from `raw`."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(rows_path), format="parquet")
    if field in dataset.schema.names and field not in ("raw", "prompt"):
        values = dataset.to_table(columns=[field]).column(field).to_pylist()
        return np.asarray([None if v is None else str(v) for v in values], dtype=object)
    out = []
    for batch in dataset.to_batches(columns=["raw"], batch_size=batch_rows):
        out += [_field_of(raw, field) for raw in batch.column("raw").to_pylist()]
    return np.asarray(out, dtype=object)


def _field_of(raw: str | None, field: str) -> str | None:
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        return None
    value = record.get(field) if isinstance(record, dict) else None
    return None if value is None or isinstance(value, dict | list) else str(value)


def score_columns(scores: dict | None) -> list[str]:
    return [c for c in scores if c not in KEY_COLUMNS] if scores is not None else []


def newest_first(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One row per id from several column dicts (each with "id"), newest first: the first wins."""
    import pandas as pd

    merged = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    keep = ~pd.Index(merged["id"]).duplicated(keep="first")
    return {c: v[keep] for c, v in merged.items()}


class _Pool:
    """The rows that can be ranked (indices into rows.parquet), their scores, and every other row's reason."""

    def __init__(self, index: np.ndarray, scores: dict[str, np.ndarray], reason: np.ndarray,
                 score_row: np.ndarray):
        self.index, self.scores = index, scores  # scores: named float arrays aligned with index
        self.groups: np.ndarray | None = None  # quota labels aligned with index (selection.quota_field)
        self.reason = reason  # per row of rows.parquet: why it is not in the pool, or None
        self.score_row = score_row  # per row of rows.parquet: its row in the scores, or -1

    @property
    def ifd(self) -> np.ndarray:
        return self.scores.get("ifd", np.full(len(self.index), np.nan))

    def reorder(self, order: np.ndarray) -> None:
        self.index = self.index[order]
        self.scores = {c: v[order] for c, v in self.scores.items()}
        if self.groups is not None:
            self.groups = self.groups[order]


def _pool(rows, scores, candidate_ids) -> _Pool:
    import pandas as pd

    n = len(rows["id"])
    reason = np.full(n, None, dtype=object)
    invalid = rows["status"] != "valid"
    reason[invalid] = ["invalid: " + str(r) for r in rows["reason"][invalid]]
    if candidate_ids is not None:
        in_pool = pd.Index(rows["id"]).isin(list(candidate_ids))
        reason[~invalid & ~in_pool] = "not in re-score pool"
    score_row = np.full(n, -1, dtype=np.int64)
    if scores is not None:
        score_row = np.asarray(pd.Index(scores["id"]).get_indexer(rows["id"]), dtype=np.int64)
        open_rows = pd.isna(reason)
        unscored = open_rows & (score_row < 0)
        reason[unscored] = "unscored: not scored"
        bad = open_rows & (score_row >= 0)
        bad &= scores["status"][np.maximum(score_row, 0)] != "scored"
        reason[bad] = ["unscored: " + str(r) for r in scores["reason"][score_row[bad]]]
    index = np.flatnonzero(pd.isna(reason))
    named = {c: scores[c][score_row[index]] for c in score_columns(scores)}
    return _Pool(index, named, reason, score_row)


def _eligible_features(rows_path, rows, pool: _Pool, cfg: IterITConfig, use_ray: bool | None):
    """TF-IDF rows of the pool, fitted on the candidates being ranked (IFD < ifd_max) only, as the
    reference does (docs/methods.md, Diversity): rows that can never be picked must not shape the idf.
    Reorders the pool (eligible rows first, in the features' order); the others get empty rows."""
    eligible, _ = ifd_eligibility(pool.ifd, cfg.ifd_max)
    pool.reorder(np.argsort(~eligible, kind="stable"))
    n_eligible = int(eligible.sum())
    order, features = _features(rows_path, rows["id"][pool.index[:n_eligible]], cfg, use_ray)
    pool.reorder(np.concatenate([order, np.arange(n_eligible, len(pool.index))]).astype(np.int64))
    empty = sp.csr_matrix((len(pool.index) - n_eligible, features.shape[1]), dtype=features.dtype)
    return sp.vstack([features, empty], format="csr")


def _features(rows_path, pool_ids: np.ndarray, cfg: IterITConfig, use_ray: bool | None):
    """(order, CSR): TF-IDF rows of the pool's responses; pool[order] is the features' row order."""
    import pandas as pd

    from raysel.selection import features as feat

    if use_ray is None:  # Ray Data's start-up costs more than hashing a small pool in process
        import ray

        use_ray = ray.is_initialized() and len(pool_ids) >= RAY_FEATURIZE_MIN_ROWS
    if cfg.features == "hashed" and use_ray:
        import ray.data

        dataset = ray.data.read_parquet(str(rows_path)).select_columns(["id", "response"])
        ids, matrix = feat.hashed_tfidf_ray(dataset, cfg.n_features, keep_ids=pool_ids)
        order = np.asarray(pd.Index(pool_ids).get_indexer(ids), dtype=np.int64)
        if len(ids) != len(pool_ids) or (order < 0).any():
            raise UserError(f"{rows_path}: ids are not unique, so responses cannot be matched to scores")
        return order, matrix
    table = pq.read_table(rows_path, columns=["id", "response"])
    at = np.asarray(pd.Index(table.column("id").to_pylist()).get_indexer(pool_ids), dtype=np.int64)
    texts = table.column("response").take(pa.array(at)).to_pylist()
    del table
    return np.arange(len(pool_ids)), feat.tfidf([t or "" for t in texts], cfg.features, cfg.n_features)


def _aligned_embeddings(embeddings, pool_ids: np.ndarray) -> np.ndarray:
    import pandas as pd

    if not embeddings:
        raise UserError("embedding diversity and kcenter need embeddings: score with scoring.embeddings=true")
    ids, matrix = read_embedding_files(embeddings) if isinstance(embeddings, list) else embeddings
    at = np.asarray(pd.Index(np.asarray(ids, dtype=object)).get_indexer(pool_ids), dtype=np.int64)
    if (at < 0).any():
        raise UserError(f"{int((at < 0).sum())} candidate rows have no embedding (e.g. {pool_ids[at < 0][0]!r}); "
                        "re-score the round with scoring.embeddings=true")
    return matrix[at]


def read_embedding_files(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, matrix) from embedding files, newest first: each row's newest vector."""
    from raysel.scoring import read_embeddings

    merged = newest_first([dict(zip(("id", "vector"), read_embeddings(p.parent), strict=True)) for p in paths])
    return merged["id"], merged["vector"]


# --- writing -------------------------------------------------------------------------------------


def _selection_table(rows, scores, pool: _Pool, sel: Selection) -> pa.Table:
    n = len(rows["id"])
    types = {c: pa.string() if scores[c].dtype == object else pa.float64() for c in score_columns(scores)}
    score_parts = {c: np.full(n, None, dtype=object) if t == pa.string() else np.full(n, np.nan)
                   for c, t in types.items()}
    if scores is not None:
        has = pool.score_row >= 0
        for c in score_parts:
            score_parts[c][has] = scores[c][pool.score_row[has]]
    ranked_rows = pool.index[sel.order]
    diversity, score = np.full(n, np.nan), np.full(n, np.nan)
    diversity[ranked_rows], score[ranked_rows] = sel.diversity, sel.score
    rank = np.full(n, -1, dtype=np.int64)
    rank[ranked_rows] = np.arange(len(sel.order))
    selected = np.zeros(n, dtype=bool)
    selected[pool.index[sel.selected]] = True
    reason = pool.reason.copy()
    reason[pool.index] = [r if r is not None else "not selected" for r in sel.reason]
    reason[selected] = None
    duplicate_of = np.full(n, None, dtype=object)
    dup = np.flatnonzero(sel.duplicate_of >= 0)
    duplicate_of[pool.index[dup]] = rows["id"][pool.index[sel.duplicate_of[dup]]]
    return pa.table({
        "id": pa.array(rows["id"], pa.string()),
        **{c: pa.array(v, types[c], from_pandas=True) for c, v in score_parts.items()},
        "diversity": pa.array(diversity, pa.float64(), from_pandas=True),
        "score": pa.array(score, pa.float64(), from_pandas=True),
        "selected": pa.array(selected, pa.bool_()),
        "rank": pa.array(rank, pa.int64(), mask=rank < 0),
        "reason": pa.array(reason, pa.string()),
        "duplicate_of": pa.array(duplicate_of, pa.string()),
    }, schema=selection_schema(types))


def _write_selected(rows_path, selected_ids: np.ndarray, path: Path) -> None:
    """The selected rows' original records, best first, one JSON object a line."""
    wanted = selected_ids.tolist()
    table = pq.read_table(rows_path, columns=["id", "raw"], filters=[("id", "in", wanted)] if wanted else None)
    raw = dict(zip(table.column("id").to_pylist(), table.column("raw").to_pylist(), strict=True))
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for i in wanted:
            text = raw[i]
            if "\n" in text:  # keep one record a line
                text = json.dumps(json.loads(text), ensure_ascii=False)
            out.write(text + "\n")


def _summary(name, table: pa.Table, pool: _Pool, sel: Selection, t_features, t_select, t_total, mixture) -> dict:
    """Counts per reason, the mean of each score the selector ranks on (selected against pool),
    each quota group's cap, pool and selected rows, timings."""
    reasons = Counter(r.split(":")[0] if r else "selected" for r in table.column("reason").to_pylist())
    means = {}
    for c in ("ifd", *get_selector(name).scores):
        values = pool.scores.get(c, np.full(len(pool.index), np.nan))
        if values.dtype != object:
            means.update({f"mean_{c}_selected": _mean(values[sel.selected]), f"mean_{c}_pool": _mean(values)})
    return {
        "method": name, "rows": table.num_rows, "pool": len(pool.index), "ranked": len(sel.order),
        "selected": int(sel.k), "reasons": dict(reasons), **means,
        **{k: v for k, v in sel.stats.items() if k != "seconds"},
        **({"quotas": _quota_summary(pool.groups, sel, mixture[1])} if mixture else {}),
        "featurize_s": round(t_features, 3), "select_s": round(t_select, 3), "total_s": round(t_total, 3),
    }


def _quota_summary(groups: np.ndarray, sel: Selection, quotas: dict) -> dict:
    """Per label of the quota field: its cap of the selection, the pool's rows, the rows selected."""
    labels = np.asarray(["" if g is None else str(g) for g in groups], dtype=object)
    pool, picked = Counter(labels.tolist()), Counter(labels[sel.selected].tolist())
    return {g: {"cap": quota_cap(quotas.get(g, quotas.get("*")), sel.k), "pool": n, "selected": picked[g]}
            for g, n in sorted(pool.items())}


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None
