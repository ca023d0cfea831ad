"""Response n-gram TF-IDF features (docs/methods.md, Diversity): what IterIT's diversity is measured on.

Word 1-3-grams of the response, lower-cased, tokens of two or more word characters; raw counts;
idf(t) = ln((1 + n) / (1 + df_t)) + 1 over the n candidates; each row L2-normalised. That is
scikit-learn's TfidfVectorizer default, which the reference implementation uses.

Two modes:
- `exact`: a vocabulary (scikit-learn's CountVectorizer); matches TfidfVectorizer. For small pools
  and for checking the hashed mode against.
- `hashed` (the default at scale): n-grams hashed into `n_features` buckets (scikit-learn's
  HashingVectorizer, no alternating sign), so no vocabulary is ever built. Document frequencies
  are counted per block (a Ray Data `map_batches` task, or in process for small inputs) and summed.

Either way the caller gets a CSR float32 matrix with one row per text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # two or more word characters (scikit-learn's default)
NGRAM_RANGE = (1, 3)
DEFAULT_N_FEATURES = 2**22
BLOCK_SIZE = 4096  # texts per block (per Ray Data batch)


@dataclass
class Block:
    """Raw n-gram counts of a block of texts (CSR parts), with the block's document frequencies."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    df_cols: np.ndarray  # the columns present in the block (sorted, unique)
    df_counts: np.ndarray  # in how many of the block's rows each appears
    ids: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_counts(cls, counts: sp.csr_matrix, ids=None) -> Block:
        counts.sum_duplicates()  # canonical: sorted, unique columns per row
        # A column's document frequency is the number of rows it appears in: once per row in CSR.
        df_cols, df_counts = np.unique(counts.indices, return_counts=True)
        return cls(counts.indptr.astype(np.int64), counts.indices.astype(np.int32),
                   counts.data.astype(np.float32), df_cols.astype(np.int64), df_counts.astype(np.int64), ids)


def hasher(n_features: int = DEFAULT_N_FEATURES):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=n_features, alternate_sign=False, norm=None, ngram_range=NGRAM_RANGE,
                             lowercase=True, token_pattern=TOKEN_PATTERN, dtype=np.float32)


def hashed_block(texts: Sequence[str], n_features: int = DEFAULT_N_FEATURES, ids=None) -> Block:
    """Hashed n-gram counts of one block of texts."""
    return Block.from_counts(hasher(n_features).transform(texts), ids)


def document_frequencies(blocks: Iterable[Block], n_features: int) -> np.ndarray:
    """Sum the blocks' document frequencies (int64, one per bucket)."""
    df = np.zeros(n_features, dtype=np.int64)
    for b in blocks:
        df[b.df_cols] += b.df_counts  # df_cols come from np.unique: unique, so += is safe
    return df


def idf_from_df(df: np.ndarray, n: int) -> np.ndarray:
    """Smoothed idf, float64: ln((1 + n) / (1 + df)) + 1."""
    return np.log((1.0 + n) / (1.0 + df.astype(np.float64))) + 1.0


def tfidf_rows(indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """TF-IDF weights of CSR rows (float32): count * idf, each row scaled to unit L2 norm."""
    w = counts.astype(np.float64) * idf[indices]
    lengths = np.diff(indptr)
    nonempty = lengths > 0
    sq = np.zeros(len(lengths))
    if nonempty.any():
        # reduceat over the non-empty rows' starts: each segment ends where the next non-empty row starts
        sq[nonempty] = np.add.reduceat(w * w, indptr[:-1][nonempty])
    norms = np.sqrt(sq)
    norms[norms == 0] = 1.0
    return (w / np.repeat(norms, lengths)).astype(np.float32)


def assemble(blocks: list[Block], df: np.ndarray, n_features: int) -> sp.csr_matrix:
    """One CSR float32 TF-IDF matrix from the blocks, in block order.

    Blocks are released as they are copied in, so the peak is about one matrix, not two.
    """
    n = sum(b.n_rows for b in blocks)
    nnz = sum(len(b.indices) for b in blocks)
    idx_dtype = np.int32 if nnz < 2**31 and n_features < 2**31 else np.int64
    indptr = np.zeros(n + 1, dtype=idx_dtype)
    indices = np.empty(nnz, dtype=idx_dtype)
    data = np.empty(nnz, dtype=np.float32)
    idf = idf_from_df(df, n)
    row, pos = 0, 0
    while blocks:
        b = blocks.pop(0)
        m, z = b.n_rows, len(b.indices)
        indptr[row + 1:row + m + 1] = b.indptr[1:] + pos
        indices[pos:pos + z] = b.indices
        data[pos:pos + z] = tfidf_rows(b.indptr, b.indices, b.data, idf)
        row, pos = row + m, pos + z
    return sp.csr_matrix((data, indices, indptr), shape=(n, n_features))


def hashed_tfidf(texts: Sequence[str], n_features: int = DEFAULT_N_FEATURES,
                 block_size: int = BLOCK_SIZE) -> sp.csr_matrix:
    """Hashed TF-IDF in this process, block by block (the same arithmetic as the Ray Data path)."""
    blocks = [hashed_block(texts[s:s + block_size], n_features) for s in range(0, len(texts), block_size)]
    df = document_frequencies(blocks, n_features)
    return assemble(blocks, df, n_features)


def exact_tfidf(texts: Sequence[str]) -> sp.csr_matrix:
    """TF-IDF over a vocabulary of the texts' n-grams; equals scikit-learn's TfidfVectorizer."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(ngram_range=NGRAM_RANGE, lowercase=True, token_pattern=TOKEN_PATTERN,
                                 dtype=np.float32)
    try:
        counts = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # "empty vocabulary": no text has a token; every row is zero
        return sp.csr_matrix((len(texts), 0), dtype=np.float32)
    block = Block.from_counts(counts)
    df = document_frequencies([block], counts.shape[1])
    return assemble([block], df, counts.shape[1])


def tfidf(texts: Sequence[str], mode: str = "hashed", n_features: int = DEFAULT_N_FEATURES) -> sp.csr_matrix:
    """TF-IDF features of texts in this process: mode `hashed` or `exact`."""
    if mode == "hashed":
        return hashed_tfidf(texts, n_features)
    if mode == "exact":
        return exact_tfidf(texts)
    raise ValueError(f"features mode {mode!r} is not known; choose hashed or exact")


# --- Ray Data ----------------------------------------------------------------------------------


def _hashed_rows(batch, n_features: int, text_column: str, id_column: str, keep: list | None):
    """(ids, Block) of a pyarrow batch's texts, only the kept ids when `keep` holds a reference."""
    ids = np.asarray(batch.column(id_column).to_numpy(zero_copy_only=False), dtype=object)
    texts = batch.column(text_column).to_pylist()
    if keep is not None:
        mask = _members(ids, _wanted_ids(keep[0]))
        ids = ids[mask]
        texts = [t for t, m in zip(texts, mask, strict=True) if m]
    return ids, hashed_block([t or "" for t in texts], n_features)


def _hash_batch(batch, n_features: int, text_column: str, id_column: str, keep: list | None):
    """map_batches UDF: a pyarrow batch of texts -> one row holding the block's counts and df."""
    import pyarrow as pa

    ids, b = _hashed_rows(batch, n_features, text_column, id_column, keep)
    return pa.table({
        "ids": pa.array([list(ids)], type=pa.list_(pa.string())),
        "indptr": pa.array([b.indptr], type=pa.list_(pa.int64())),
        "indices": pa.array([b.indices], type=pa.list_(pa.int32())),
        "data": pa.array([b.data], type=pa.list_(pa.float32())),
        "df_cols": pa.array([b.df_cols], type=pa.list_(pa.int64())),
        "df_counts": pa.array([b.df_counts], type=pa.list_(pa.int64())),
    })


def _keep_ref(keep_ids) -> list | None:
    """The kept ids, sorted, in the object store once; a list, so that Ray passes the ref as is."""
    import ray

    return None if keep_ids is None else [ray.put(np.sort(np.asarray(keep_ids, dtype=str)))]


_WANTED: dict = {}


def _wanted_ids(ref) -> np.ndarray:
    """The sorted candidate ids, fetched once per worker process."""
    import ray

    key = ref.hex()
    if key not in _WANTED:
        _WANTED.clear()
        _WANTED[key] = ray.get(ref)
    return _WANTED[key]


def _members(ids: np.ndarray, wanted_sorted: np.ndarray) -> np.ndarray:
    ids = ids.astype(str)
    pos = np.searchsorted(wanted_sorted, ids)
    pos = np.minimum(pos, len(wanted_sorted) - 1)
    return (wanted_sorted[pos] == ids) if len(wanted_sorted) else np.zeros(len(ids), bool)


def _count_batch(batch, n_features: int, text_column: str, id_column: str, keep: list | None):
    """map_batches UDF: a pyarrow batch of texts -> one row per (kept) text: id, hashed n-gram
    columns (sorted, unique), their counts."""

    ids, b = _hashed_rows(batch, n_features, text_column, id_column, keep)
    return counts_table(ids.tolist(), b.indptr, b.indices, b.data)


def counts_table(ids: list[str], indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray):
    """Hashed counts in CSR parts as the table write_hashed_counts writes: id, indices, counts."""
    import pyarrow as pa

    offsets = pa.array(np.asarray(indptr).astype(np.int32))
    return pa.table({
        "id": pa.array(ids, type=pa.string()),
        "indices": pa.ListArray.from_arrays(offsets, pa.array(indices, type=pa.int32())),
        "counts": pa.ListArray.from_arrays(offsets, pa.array(counts, type=pa.float32())),
    })


def write_hashed_counts(dataset, folder, n_features: int = DEFAULT_N_FEATURES, *, text_column: str = "response",
                        id_column: str = "id", keep_ids: np.ndarray | None = None,
                        block_size: int = BLOCK_SIZE) -> None:
    """Hashed n-gram counts of a Ray dataset's texts, written by Ray Data as Parquet files into
    `folder` (columns id, indices, counts; one row per text): the distributed greedy's input
    (greedi.py). Nothing per row passes through the driver. keep_ids: only these rows."""
    keep = _keep_ref(keep_ids)
    dataset.select_columns([id_column, text_column]).map_batches(
        _count_batch, batch_format="pyarrow", batch_size=block_size, zero_copy_batch=True,
        fn_kwargs={"n_features": n_features, "text_column": text_column, "id_column": id_column, "keep": keep},
    ).write_parquet(str(folder))


def _blocks_from_arrow(table) -> list[Block]:
    """Blocks over one output batch of the Ray Data job: zero-copy views, so the counts are held once
    (in the object store) until assemble() has copied them into the final matrix."""
    out = []
    for i in range(table.num_rows):
        def col(name, i=i):
            return table.column(name)[i].values.to_numpy(zero_copy_only=False)
        ids = np.array(table.column("ids")[i].values.to_pylist(), dtype=object)
        out.append(Block(col("indptr"), col("indices"), col("data"), col("df_cols"), col("df_counts"), ids))
    return out


def hashed_tfidf_ray(dataset, n_features: int = DEFAULT_N_FEATURES, *, text_column: str = "response",
                     id_column: str = "id", keep_ids: np.ndarray | None = None,
                     block_size: int = BLOCK_SIZE) -> tuple[np.ndarray, sp.csr_matrix]:
    """Hashed TF-IDF of a Ray dataset's texts: counts and document frequencies per block in Ray Data,
    summed here. Returns (ids, CSR float32), rows in the order the blocks came back.

    keep_ids: only rows with these ids are featurised (and counted in the document frequencies).
    """
    keep = _keep_ref(keep_ids)
    hashed = dataset.select_columns([id_column, text_column]).map_batches(
        _hash_batch, batch_format="pyarrow", batch_size=block_size, zero_copy_batch=True,
        fn_kwargs={"n_features": n_features, "text_column": text_column, "id_column": id_column, "keep": keep})
    blocks: list[Block] = []
    for table in hashed.iter_batches(batch_format="pyarrow", batch_size=None):
        blocks.extend(b for b in _blocks_from_arrow(table) if b.n_rows)
    ids = np.concatenate([b.ids for b in blocks]) if blocks else np.array([], dtype=object)
    df = document_frequencies(blocks, n_features)
    log.info("hashed %d texts in %d blocks (%d non-zeros)", len(ids), len(blocks),
             sum(len(b.indices) for b in blocks))
    return ids, assemble(blocks, df, n_features)
