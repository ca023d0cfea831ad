"""Response TF-IDF features: exact equals scikit-learn, hashed agrees with exact, Ray Data sums blocks."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from raysel.demo import synthetic
from raysel.selection import features, select

TEXTS = [
    "The cat sat on the mat. The cat sat!",
    "A dog; a DOG, and the cat.",
    "",
    "x y z",  # no token of two or more word characters
    "naïve café, déjà vu: the café",
    "numbers 12 34 12 34 and under_scores",
]


def test_exact_tfidf_equals_scikit_learn():
    texts = TEXTS + synthetic.responses(200, seed=11)
    ours = features.exact_tfidf(texts)
    ref = TfidfVectorizer(ngram_range=(1, 3), dtype=np.float64).fit_transform(texts)
    assert ours.dtype == np.float32 and sp.isspmatrix_csr(ours)
    assert ours.shape == ref.shape
    assert abs(ours - ref).max() < 1e-6


def test_exact_tfidf_of_texts_without_tokens_is_all_zero():
    assert features.exact_tfidf(["", "a b"]).nnz == 0


def test_hashed_tfidf_is_exact_tfidf_up_to_column_names():
    # with no hash collision, each hashed column is one vocabulary column: the same weights per row
    texts = TEXTS + synthetic.responses(4, seed=12)
    exact = features.exact_tfidf(texts)
    hashed = features.hashed_tfidf(texts, n_features=2**24, block_size=3)
    assert len(np.unique(hashed.indices)) == exact.shape[1]  # no collision among these n-grams
    for i in range(len(texts)):
        a = np.sort(exact.data[exact.indptr[i]:exact.indptr[i + 1]])
        b = np.sort(hashed.data[hashed.indptr[i]:hashed.indptr[i + 1]])
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_document_frequencies_sum_across_blocks():
    texts = synthetic.responses(90, seed=13)
    whole = features.hashed_block(texts, 2**18)
    blocks = [features.hashed_block(texts[s:s + 17], 2**18) for s in range(0, 90, 17)]
    df = features.document_frequencies(blocks, 2**18)
    counts = sp.csr_matrix((whole.data, whole.indices, whole.indptr), shape=(90, 2**18))
    assert (df == np.asarray((counts > 0).sum(axis=0)).ravel()).all()
    assert (df == features.document_frequencies([whole], 2**18)).all()
    in_blocks = features.hashed_tfidf(texts, 2**18, block_size=17)
    in_one = features.hashed_tfidf(texts, 2**18, block_size=1000)
    assert (in_blocks != in_one).nnz == 0


def test_hashed_and_exact_select_nearly_the_same(capsys):
    """A realistic pool (Zipf words, 20-300 words a response): the selections overlap almost fully."""
    n, k = 2000, 100
    texts = synthetic.responses(n, seed=14)
    ifd = synthetic.ifd_scores(n, seed=15)
    ids = [f"q{i:05d}" for i in range(n)]
    exact = select("iterit", ifd, k, ids=ids, features=features.exact_tfidf(texts))
    hashed = select("iterit", ifd, k, ids=ids, features=features.hashed_tfidf(texts))
    overlap = len(set(exact.selected.tolist()) & set(hashed.selected.tolist())) / k
    with capsys.disabled():
        print(f"\nhashed vs exact TF-IDF selection overlap: {overlap:.3f} (n={n}, k={k})")
    assert overlap >= 0.9


def test_tfidf_mode_must_be_known():
    with pytest.raises(ValueError, match="hashed or exact"):
        features.tfidf(["a"], mode="dense")
