"""Synthetic pools with realistic statistics, for tests and benchmarks (no model, no download).

Responses: words drawn from a Zipf-distributed vocabulary (as natural text is), lengths from 20 to
300 words (log-normal, median about 90). IFD: log-normal around 0.7 with about 12% at or above 1.0,
the shape IFD takes on instruction pools. Embeddings: points around a few hundred topic centres.
"""

from __future__ import annotations

import numpy as np

_SYLLABLES = ["ka", "lo", "mi", "ne", "tu", "ra", "se", "vo", "di", "pa", "ze", "gu", "shi", "an", "el",
              "or", "ti", "be", "mo", "qu", "fa", "yo", "re", "ix"]


def vocabulary(size: int, seed: int = 0) -> np.ndarray:
    """`size` distinct pseudo-words of two to four syllables (all match the token pattern \\w\\w+)."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        n = rng.integers(2, 5, size=size)
        picks = rng.integers(0, len(_SYLLABLES), size=(size, 4))
        for length, row in zip(n, picks, strict=True):
            words.setdefault("".join(_SYLLABLES[j] for j in row[:length]), None)
            if len(words) == size:
                break
    return np.array(list(words), dtype=object)


def responses(n: int, seed: int = 0, vocab_size: int = 50_000, zipf_s: float = 1.1,
              min_words: int = 20, max_words: int = 300) -> list[str]:
    """`n` response texts: Zipf word frequencies, log-normal lengths clipped to [min_words, max_words]."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(vocab_size, seed=1234)  # one language for every seed
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    p = ranks ** -zipf_s
    cdf = np.cumsum(p / p.sum())
    lengths = np.clip(np.round(rng.lognormal(np.log(90), 0.6, size=n)), min_words, max_words).astype(np.int64)
    words = np.searchsorted(cdf, rng.random(int(lengths.sum())))
    words = np.minimum(words, vocab_size - 1)
    ends = np.cumsum(lengths)
    return [" ".join(vocab[words[e - m:e]]) for e, m in zip(ends, lengths, strict=True)]


def hashed_counts(n: int, n_features: int, seed: int = 0, vocab_size: int = 50_000,
                  zipf_s: float = 1.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashed word 1-3-gram counts of n responses drawn as `responses` draws them (Zipf words,
    log-normal lengths), without writing the text: CSR parts (indptr, columns sorted within each
    row, counts as float32). For selection at scales where tokenising text would dominate."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -zipf_s / np.sum(ranks ** -zipf_s))
    lengths = np.clip(np.round(rng.lognormal(np.log(90), 0.6, size=n)), 20, 300).astype(np.int64)
    words = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), vocab_size - 1).astype(np.uint64)
    row = np.repeat(np.arange(n, dtype=np.uint64), lengths)
    keys = []
    for g in (1, 2, 3):  # an n-gram counts where its words all lie in one row
        at = np.flatnonzero(row[:len(row) - g + 1] == row[g - 1:])
        h = np.full(len(at), np.uint64(g), dtype=np.uint64)
        for j in range(g):
            h = _mix(h * np.uint64(0x9E3779B97F4A7C15) + words[at + j])
        keys.append(row[at] * np.uint64(n_features) + h % np.uint64(n_features))
    unique, counts = np.unique(np.concatenate(keys), return_counts=True)
    rows = (unique // np.uint64(n_features)).astype(np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(rows, minlength=n))
    return indptr, (unique % np.uint64(n_features)).astype(np.int32), counts.astype(np.float32)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64, wrapping): every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def ifd_scores(n: int, seed: int = 0) -> np.ndarray:
    """IFD values: log-normal, median 0.7, about 12% at or above 1.0 (ineligible)."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(np.log(0.7), 0.3, size=n))


def embeddings(n: int, dim: int = 384, seed: int = 0, n_topics: int = 500, chunk: int = 100_000) -> np.ndarray:
    """float16 (n, dim) unit vectors around `n_topics` topic centres (cosine about 0.6 within a topic)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        topic = rng.integers(0, n_topics, size=m)
        x = centres[topic] + rng.standard_normal((m, dim)).astype(np.float32) * (0.8 / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out
