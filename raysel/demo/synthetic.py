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
