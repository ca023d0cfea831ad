"""Mixture quotas (selection.quota_field, selection.quotas): the greedies against naive loops that
take the best admissible sample, every selector within its caps, the stage's summary, the config."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_selection import embedding_pools, pools

from raysel.config import CONFIG_DIR, ConfigError, IterITConfig, load_config
from raysel.demo import synthetic
from raysel.selection import SELECTORS, greedy, select
from raysel.selection import embedding as emb
from raysel.selection.base import QUOTA_FULL, quota_cap
from raysel.selection.features import hashed_tfidf
from raysel.selection.stage import select_round


def caps_admit(groups, quotas, k):
    """admits(i, picked) for the naive loops: the first k picks stay within each group's cap."""
    def admits(i, picked):
        if len(picked) >= k:
            return True
        g = groups[i]
        cap = quota_cap(quotas.get(g, quotas.get("*")), k)
        return sum(groups[j] == g for j in picked) < cap
    return admits


def naive_iterit_within(w, ifd, ids, k, n_rank, gamma, admits):
    """argmax of IFD * D(i | S) over the unpicked eligible samples that the quotas admit."""
    table = greedy.decay_table(gamma, n_rank)
    counts = np.zeros(w.shape[1], dtype=np.int64)
    eligible = [i for i in range(len(ids)) if np.isfinite(ifd[i]) and 0 <= ifd[i] < 1.0]
    order = []
    while len(order) < min(n_rank, len(eligible)):
        d = greedy.diversity_gains(w, table[counts])
        left = [i for i in eligible if i not in order and admits(i, order)]
        if not left:
            break
        best = min(left, key=lambda i: (-(ifd[i] * d[i]), ids[i]))
        order.append(best)
        counts[w.indices[w.indptr[best]:w.indptr[best + 1]]] += 1
    return order


GROUPS = st.sampled_from(["a", "b", "c", None])
QUOTAS = st.sampled_from([{"a": 0.5}, {"a": 1, "b": 1}, {"*": 0.34}, {"a": 0.25, "*": 2}, {"b": 0.99, "c": 3}])


def draw_case(data, n: int):
    """A group per sample (None: no label), the same labels as the quotas see them, k and n_rank."""
    groups = np.array(data.draw(st.lists(GROUPS, min_size=n, max_size=n)), dtype=object)
    k = data.draw(st.integers(1, n))
    return groups, np.array(["" if g is None else g for g in groups], dtype=object), k, data.draw(st.integers(k, n))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=pools(), quotas=QUOTAS, data=st.data())
def test_lazy_iterit_within_quotas_equals_the_naive_loop(pool, quotas, data):
    w, ifd, ids = pool
    groups, labels, k, n_rank = draw_case(data, len(ids))
    sel = select("iterit", ifd, k, n_rank, ids=ids, features=w, gamma=0.1, groups=groups, quotas=quotas)
    assert sel.order.tolist() == naive_iterit_within(w, ifd, ids, k, n_rank, 0.1, caps_admit(labels, quotas, k))
    assert set(np.flatnonzero(sel.reason == QUOTA_FULL)).isdisjoint(sel.selected.tolist())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=embedding_pools(), quotas=QUOTAS, data=st.data())
def test_lazy_embedding_within_quotas_equals_the_naive_loop(pool, quotas, data):
    x, ifd, ids = pool
    groups, labels, k, n_rank = draw_case(data, len(ids))
    sel = select("embedding", ifd, k, n_rank, ids=ids, embeddings=x, groups=groups, quotas=quotas)
    admits = caps_admit(labels, quotas, k)
    q, scale = emb.quantize(x), emb.similarity_scale(x.shape[1])
    eligible = [i for i in range(len(ids)) if np.isfinite(ifd[i]) and ifd[i] < 1.0]
    order = []
    while len(order) < n_rank:
        left = [i for i in eligible if i not in order and admits(i, order)]
        if not left:
            break
        sim = {i: max(0.0, float(((q[order] @ q[i]) * scale).max())) if order else 0.0 for i in left}
        order.append(min(left, key=lambda i: (-(float(ifd[i]) * (1.0 - sim[i])), ids[i])))
    assert sel.order.tolist() == order


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_keeps_its_selection_within_the_caps(name):
    n, k = 90, 20
    ids = np.array([f"s{i:03d}" for i in range(n)], dtype=object)
    groups = np.array(["web", "code", "books"] * 30, dtype=object)
    quotas = {"web": 0.5, "code": 0.25, "books": 2}
    rng = np.random.default_rng(0)
    scores = {"reward": rng.random(n), "pseudo_domain": np.array(["x", "y"] * 45, dtype=object)}
    sel = select(name, synthetic.ifd_scores(n, seed=1) * 0.9, k, 40, ids=ids,
                 features=hashed_tfidf(synthetic.responses(n, seed=2), 2**12),
                 embeddings=synthetic.embeddings(n, dim=8, seed=3), scores=scores, groups=groups, quotas=quotas)
    picked = groups[sel.selected].tolist()
    if name == "full":  # its k is every row: the shares are of all 90
        assert (picked.count("web"), picked.count("code"), picked.count("books")) == (30, 22, 2)
    else:  # every group has enough rows to fill its cap, and the caps bind
        assert (picked.count("web"), picked.count("code"), picked.count("books")) == (10, 5, 2)
    assert not set(np.flatnonzero(sel.reason == QUOTA_FULL)) & set(sel.selected.tolist())
    assert len(set(sel.order.tolist())) == len(sel.order)


def test_top_ifd_within_quotas_takes_each_groups_best():
    ids = np.array([f"s{i}" for i in range(8)], dtype=object)
    ifd = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    groups = np.array(["a", "a", "a", "b", "a", "b", "b", "c"], dtype=object)
    sel = select("ifd", ifd, 4, 6, ids=ids, groups=groups, quotas={"a": 2, "*": 1})
    assert sel.selected.tolist() == [0, 1, 3, 7]  # a's best two, b's best, c's only
    assert sel.reason[2] == QUOTA_FULL and sel.reason[4] == QUOTA_FULL and sel.reason[5] == QUOTA_FULL
    assert sel.order.tolist()[:6] == [0, 1, 3, 7, 2, 4]  # then the rest of the ranking, in its order


def test_stage_reads_the_quota_field_from_the_records_and_reports_it(tmp_path):
    n = 60
    texts = synthetic.responses(n, seed=4)
    domains = ["math", "code", "chat"] * 20
    raw = [json.dumps({"output": t, "domain": d}) for t, d in zip(texts, domains, strict=True)]
    raw[5] = "not json at all"
    rows = pa.table({"id": [f"r{i:02d}" for i in range(n)], "status": ["valid"] * n, "reason": [None] * n,
                     "source": ["a.jsonl"] * 30 + ["b.jsonl"] * 30, "response": texts, "raw": raw})
    pq.write_table(rows, tmp_path / "rows.parquet")
    ifd = synthetic.ifd_scores(n, seed=5) * 0.9
    pq.write_table(pa.table({"id": rows["id"], "status": ["scored"] * n, "reason": [None] * n, "ifd": ifd}),
                   tmp_path / "scores.parquet")
    summary = select_round(tmp_path / "rows.parquet", tmp_path / "scores.parquet", tmp_path / "out", "iterit",
                           IterITConfig(features="exact"), k=12, n_rank=30, seed=0, use_ray=False,
                           mixture=("domain", {"math": 0.5, "*": 0.25}))
    q = summary["quotas"]
    assert q["math"]["cap"] == 6 and q["code"]["cap"] == q["chat"]["cap"] == 3 and q[""]["cap"] == 3
    assert sum(v["pool"] for v in q.values()) == n and q[""]["pool"] == 1  # the unparsable record
    assert sum(v["selected"] for v in q.values()) == summary["selected"] == 12
    assert all(v["selected"] <= v["cap"] for v in q.values())
    table = pq.read_table(tmp_path / "out" / "selection.parquet").to_pylist()
    assert len(table) == n and sum(r["selected"] for r in table) == 12
    assert summary["reasons"]["quota full"] == sum(r["reason"] == QUOTA_FULL for r in table) > 0
    by_file = select_round(tmp_path / "rows.parquet", tmp_path / "scores.parquet", tmp_path / "out2", "random",
                           IterITConfig(), k=10, n_rank=10, seed=0, mixture=("source", {"a.jsonl": 0.3}))
    assert by_file["quotas"]["a.jsonl"]["selected"] == 3 and by_file["quotas"]["b.jsonl"]["selected"] == 7


def test_stage_distributed_greedy_keeps_the_caps(tmp_path, ray_session):
    n = 300
    texts = synthetic.responses(n, seed=6)
    rows = pa.table({"id": [f"r{i:03d}" for i in range(n)], "status": ["valid"] * n, "reason": [None] * n,
                     "source": ["a", "b", "c"] * 100, "response": texts, "raw": ["{}"] * n})
    pq.write_table(rows, tmp_path / "rows.parquet")
    ifd = synthetic.ifd_scores(n, seed=7) * 0.9
    pq.write_table(pa.table({"id": rows["id"], "status": ["scored"] * n, "reason": [None] * n, "ifd": ifd}),
                   tmp_path / "scores.parquet")
    cfg = IterITConfig(n_features=2**14, greedy="greedi", shard_rows=80)
    summary = select_round(tmp_path / "rows.parquet", tmp_path / "scores.parquet", tmp_path / "out", "iterit", cfg,
                           k=20, n_rank=30, seed=0, mixture=("source", {"a": 0.1, "b": 0.2}))
    assert summary["greedi_shards"] > 1
    q = summary["quotas"]
    assert (q["a"]["selected"], q["b"]["selected"], q["c"]["selected"]) == (2, 4, 14)


def test_quotas_need_their_field_and_positive_values():
    with pytest.raises(ConfigError, match="quota_field"):
        load_config(CONFIG_DIR / "demo.yaml", ["selection.quotas={web: 0.5}"])
    with pytest.raises(ConfigError, match="positive"):
        load_config(CONFIG_DIR / "demo.yaml", ["selection.quota_field=source", "selection.quotas={web: -1}"])
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["selection.quota_field=domain", "selection.quotas={math: 0.5}"])
    assert cfg.selection.quotas == {"math": 0.5}
