"""Selectors: the lazy greedies against naive oracles, de-duplication, baselines, the registry."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raysel.selection import SELECTORS, greedy, select
from raysel.selection import embedding as emb
from raysel.selection.base import tie_ranks

# --- oracles: the definitions, written as plainly as possible ------------------------------------


def naive_iterit(w, ifd, ids, n_rank, gamma, ifd_max):
    """argmax of IFD * D(i | S) over every unpicked eligible sample, recomputed at every step."""
    w = sp.csr_matrix(w)
    table = greedy.decay_table(gamma, n_rank)
    counts = np.zeros(w.shape[1], dtype=np.int64)
    eligible = [i for i in range(len(ids)) if np.isfinite(ifd[i]) and 0 <= ifd[i] < ifd_max]
    order, gains, scores = [], [], []
    for _ in range(min(n_rank, len(eligible))):
        d = greedy.diversity_gains(w, table[counts])
        left = [i for i in eligible if i not in order]
        best = min(left, key=lambda i: (-(ifd[i] * d[i]), ids[i]))
        order.append(best)
        gains.append(d[best])
        scores.append(ifd[best] * d[best])
        counts[w.indices[w.indptr[best]:w.indptr[best + 1]]] += 1
    return order, gains, scores


def naive_embedding(q, weight, candidates, ids, n_rank, floor, threshold):
    """argmax of weight * (1 - max(floor, max similarity to S)), duplicates excluded, then labelled."""
    scale = emb.similarity_scale(q.shape[1])

    def max_sim(i, picks):
        if not picks:
            return np.float32(floor), -1
        sims = (q[picks] @ q[i]) * scale
        j = int(np.argmax(sims))
        return max(np.float32(floor), sims[j]), j

    order = []
    for _ in range(n_rank):
        left = [i for i in candidates if i not in order]
        left = [i for i in left if threshold is None or max_sim(i, order)[0] <= threshold]
        if not left:
            break
        order.append(min(left, key=lambda i: (-(float(weight[i]) * (1.0 - float(max_sim(i, order)[0]))), ids[i])))
    duplicate_of = {}
    for i in candidates:
        if threshold is not None and i not in order:
            sim, j = max_sim(i, order)
            if sim > threshold:
                duplicate_of[i] = order[j]
    return order, duplicate_of


# --- random pools -------------------------------------------------------------------------------


@st.composite
def pools(draw):
    """Small pools full of ties: a few weight values, repeated rows, equal IFDs, shuffled string ids."""
    n = draw(st.integers(1, 18))
    n_cols = draw(st.integers(1, 10))
    weights = st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0])
    rows = draw(st.lists(st.lists(weights, min_size=n_cols, max_size=n_cols), min_size=n, max_size=n))
    ifd = draw(st.lists(st.sampled_from([0.3, 0.5, 0.5, 0.9, 1.0, 1.5, float("nan")]), min_size=n, max_size=n))
    ids = draw(st.lists(st.text("abc", min_size=1, max_size=3), min_size=n, max_size=n, unique=True))
    return sp.csr_matrix(np.array(rows, dtype=np.float32)), np.array(ifd), np.array(ids, dtype=object)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=pools(), gamma=st.sampled_from([0.0, 0.1, 1.0]), data=st.data())
def test_lazy_iterit_equals_naive(pool, gamma, data):
    w, ifd, ids = pool
    k = data.draw(st.integers(1, len(ids)))
    n_rank = data.draw(st.integers(k, len(ids)))
    sel = select("iterit", ifd, k, n_rank, ids=ids, features=w, gamma=gamma)
    order, gains, scores = naive_iterit(w, ifd, ids, n_rank, gamma, 1.0)
    assert sel.order.tolist() == order
    assert sel.diversity.tolist() == gains
    assert sel.score.tolist() == scores
    assert len(set(sel.order.tolist())) == len(sel.order)  # never picked twice
    assert sel.k == min(k, len(order))


def test_lazy_iterit_equals_naive_when_every_score_reaches_zero():
    # gamma = 0 on one shared column: after the first pick every D is 0, then ties go by id
    w = sp.csr_matrix(np.ones((6, 1), dtype=np.float32))
    ifd = np.array([0.9, 0.5, 0.5, 0.7, 0.2, 0.5])
    ids = np.array(["f", "e", "d", "c", "b", "a"], dtype=object)
    sel = select("iterit", ifd, 6, ids=ids, features=w, gamma=0.0)
    assert sel.order.tolist() == [0, 5, 4, 3, 2, 1]  # highest score, then ids a, b, c, d, e
    assert sel.score.tolist() == [0.9, 0, 0, 0, 0, 0]
    assert sel.order.tolist() == naive_iterit(w, ifd, ids, 6, 0.0, 1.0)[0]


def test_lazy_iterit_equals_naive_on_tfidf_pool():
    from raysel.demo import synthetic
    from raysel.selection import features

    w = features.exact_tfidf(synthetic.responses(120, seed=5))
    ifd = synthetic.ifd_scores(120, seed=6)
    ids = np.array([f"s{i:03d}" for i in range(120)], dtype=object)[::-1].copy()
    for gamma in (0.0, 0.1, 0.5, 1.0):
        sel = select("iterit", ifd, 40, 80, ids=ids, features=w, gamma=gamma)
        assert sel.order.tolist() == naive_iterit(w, ifd, ids, 80, gamma, 1.0)[0]


def test_diversity_gain_matches_float_definition():
    rng = np.random.default_rng(0)
    w = sp.random(50, 30, density=0.3, random_state=1, dtype=np.float32, format="csr")
    counts = rng.integers(0, 4, size=30)
    decay = greedy.decay_table(0.3, 10)[counts]
    dense = w.toarray().astype(np.float64) @ (0.3 ** counts.astype(np.float64))
    np.testing.assert_allclose(greedy.diversity_gains(w, decay), dense, rtol=1e-6, atol=1e-12)
    rows = np.array([3, 0, 49, 3])
    assert (greedy.gains_of_rows(w, rows, decay) == greedy.diversity_gains(w, decay)[rows]).all()
    assert (greedy.diversity_gains(w, decay, chunk_nnz=7) == greedy.diversity_gains(w, decay)).all()


def test_coverage_saturates_where_terms_vanish():
    cov = greedy.Coverage(3, 0.1, 1000)
    assert cov.counts.dtype == np.uint8 and cov.table[cov.cap] < 1 <= cov.table[cov.cap - 1]
    for _ in range(cov.cap + 5):
        cov.cover(np.array([0, 2]))
    assert cov.counts.tolist() == [cov.cap, 0, cov.cap] and cov.decay[0] < 1
    assert greedy.Coverage(1, 1.0, 10**6).decay[0] == greedy.SCALE  # gamma = 1: coverage changes nothing


def test_iterit_excludes_ineligible_ifd_with_reasons():
    w = sp.csr_matrix(np.eye(5, dtype=np.float32))
    ifd = np.array([0.5, 1.0, np.nan, 2.0, -0.1])
    sel = select("iterit", ifd, 5, ids=list("abcde"), features=w)
    assert sel.order.tolist() == [0]
    assert sel.reason.tolist() == [None, "ifd>=max", "ifd invalid", "ifd>=max", "ifd invalid"]


def test_iterit_rejects_unnormalised_features():
    w = sp.csr_matrix(np.array([[2.0, 0.0]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        select("iterit", [0.5], 1, ids=["a"], features=w)


# --- embedding greedy ---------------------------------------------------------------------------


@st.composite
def embedding_pools(draw):
    n = draw(st.integers(1, 14))
    d = draw(st.integers(2, 6))
    values = st.sampled_from([-1.0, 0.0, 0.0, 0.5, 1.0, 2.0])
    x = np.array(draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=n, max_size=n)))
    ifd = draw(st.lists(st.sampled_from([0.4, 0.6, 0.6, 0.95, 1.2, float("nan")]), min_size=n, max_size=n))
    ids = draw(st.lists(st.text("xyz", min_size=1, max_size=3), min_size=n, max_size=n, unique=True))
    return x.astype(np.float16), np.array(ifd), np.array(ids, dtype=object)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=embedding_pools(), threshold=st.sampled_from([None, 0.7, 0.99]), data=st.data())
def test_lazy_embedding_equals_naive(pool, threshold, data):
    x, ifd, ids = pool
    n_rank = data.draw(st.integers(1, len(ids)))
    sel = select("embedding", ifd, 1, n_rank, ids=ids, embeddings=x, dedup_threshold=threshold)
    eligible = [i for i in range(len(ids)) if np.isfinite(ifd[i]) and ifd[i] < 1.0]
    order, dups = naive_embedding(emb.quantize(x), ifd, eligible, ids, n_rank, 0.0, threshold)
    assert sel.order.tolist() == order
    assert {i: int(j) for i, j in enumerate(sel.duplicate_of) if j >= 0} == dups
    assert [i for i, r in enumerate(sel.reason) if r == "duplicate"] == sorted(dups)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=embedding_pools(), data=st.data())
def test_kcenter_equals_naive(pool, data):
    x, _, ids = pool
    n_rank = data.draw(st.integers(1, len(ids)))
    sel = select("kcenter", None, n_rank, ids=ids, embeddings=x)
    order, _ = naive_embedding(emb.quantize(x), np.ones(len(ids)), list(range(len(ids))), ids, n_rank, -1.0, None)
    assert sel.order.tolist() == order
    assert sel.order[0] == int(np.argmin(tie_ranks(ids)))  # starts from the lowest id


def test_embedding_greedy_on_realistic_pool_equals_naive_and_faiss_index():
    from raysel.demo import synthetic

    x = synthetic.embeddings(300, dim=24, n_topics=12, seed=3)
    ifd = synthetic.ifd_scores(300, seed=4)
    ids = np.array([f"e{i:03d}" for i in range(300)], dtype=object)
    sel = select("embedding", ifd, 30, 60, ids=ids, embeddings=x)
    eligible = np.flatnonzero(ifd < 1.0)
    q = emb.quantize(x)
    assert sel.order.tolist() == naive_embedding(q, ifd, eligible.tolist(), ids, 60, 0.0, None)[0]
    # the FAISS index path (what runs on GPU, here a CPU IndexFlatIP) ranks the same
    order, gains, scores, _ = emb.lazy_embedding_greedy(q, ifd, eligible, tie_ranks(ids), 60, backend="faiss")
    assert order.tolist() == sel.order.tolist() and scores.tolist() == sel.score.tolist()


def test_similarities_are_exact_whatever_the_product():
    x = emb.quantize(np.random.default_rng(0).standard_normal((64, 384)).astype(np.float16))
    full = x @ x.T
    by_rows = np.stack([x @ v for v in x])
    by_float64 = (x.astype(np.float64) @ x.astype(np.float64).T).astype(np.float32)
    assert (full == by_rows.T).all() and (full == by_float64).all()
    assert np.abs(np.diag(full) * emb.similarity_scale(384) - 1).max() < 1e-3


def test_dedup_excludes_planted_duplicates_and_nothing_else():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    twins = {50 + j: src for j, src in enumerate([3, 11, 27, 40])}  # near copies of four samples
    x = np.vstack([x, x[list(twins.values())] + 1e-3 * rng.standard_normal((4, 16))]).astype(np.float16)
    ids = np.array([f"r{i:02d}" for i in range(54)], dtype=object)
    ifd = np.full(54, 0.5)
    sel = select("embedding", ifd, 54, ids=ids, embeddings=x, dedup_threshold=0.98)
    flagged = {int(i): int(sel.duplicate_of[i]) for i in np.flatnonzero(sel.reason == "duplicate")}
    pairs = {frozenset((a, b)) for a, b in twins.items()}
    assert len(flagged) == 4 and {frozenset((a, b)) for a, b in flagged.items()} == pairs
    assert len(sel.order) == 50 and not set(flagged) & set(sel.order.tolist())


# --- baselines and the registry -----------------------------------------------------------------


def test_random_is_seeded_and_independent_of_input_order():
    ids = np.array([f"x{i}" for i in range(100)], dtype=object)
    a = select("random", None, 10, ids=ids, seed=3)
    b = select("random", None, 10, ids=ids[::-1], seed=3)
    assert ids[a.selected].tolist() == ids[::-1][b.selected].tolist()
    assert ids[a.selected].tolist() != ids[select("random", None, 10, ids=ids, seed=4).selected].tolist()


def test_ifd_baseline_takes_top_ifd_below_max_ties_by_id():
    ifd = np.array([0.9, 1.3, 0.95, 0.9, np.nan])
    sel = select("ifd", ifd, 3, ids=["d", "a", "b", "c", "e"])
    assert sel.selected.tolist() == [2, 3, 0]  # 0.95, then 0.9 with id c before d
    assert sel.reason[1] == "ifd>=max" and sel.reason[4] == "ifd invalid"


def test_full_selects_everything():
    sel = select("full", None, 1, ids=["b", "a", "c"])
    assert sel.k == 3 and sel.order.tolist() == [1, 0, 2]


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_ranks_distinct_samples(name):
    from raysel.demo import synthetic
    from raysel.selection import features

    n = 80
    texts = synthetic.responses(n, seed=1)
    daar_scores = {"reward": synthetic.ifd_scores(n, seed=4), "pseudo_domain": np.array(list("abcd") * 20)}
    sel = select(name, synthetic.ifd_scores(n, seed=2), 10, 30, ids=[f"i{j:02d}" for j in range(n)],
                 features=features.exact_tfidf(texts), embeddings=synthetic.embeddings(n, dim=8, seed=3),
                 scores=daar_scores)
    assert len(set(sel.order.tolist())) == len(sel.order)
    assert sel.k == (n if name == "full" else 10)
    assert len(sel.order) == len(sel.score) == len(sel.diversity)
    assert len(sel.reason) == len(sel.duplicate_of) == n


def test_unknown_selector_lists_the_valid_ones():
    with pytest.raises(ValueError, match="iterit, embedding, daar, random, ifd, ifd_static, full, kcenter"):
        select("greedy", None, 1, ids=["a"])


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="unique"):
        select("random", None, 1, ids=["a", "b", "a"])
