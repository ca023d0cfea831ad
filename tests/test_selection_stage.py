"""The selection stage: files in, selection.parquet (one row per pool row) and selected.jsonl out."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from raysel.config import IterITConfig, UserError
from raysel.demo import synthetic
from raysel.selection.stage import rank_pool, ranked_ids, select_round

N = 120


@pytest.fixture()
def run_dir(tmp_path):
    """rows.parquet (5 invalid rows) and round-0/scores.parquet (3 scoring failures, some IFD >= 1)."""
    texts = synthetic.responses(N, seed=21)
    ids = [f"row-{i:03d}" for i in range(N)]
    invalid = set(range(0, N, 24))
    rows = pa.table({
        "id": ids,
        "status": ["invalid" if i in invalid else "valid" for i in range(N)],
        "reason": ["empty output" if i in invalid else None for i in range(N)],
        "source": ["pool.jsonl"] * N,
        "source_row": list(range(N)),
        "prompt": [[{"role": "user", "content": f"question {i}"}] for i in range(N)],
        "response": texts,
        "raw": [json.dumps({"instruction": f"question {i}", "output": t}) for i, t in enumerate(texts)],
    })
    pq.write_table(rows, tmp_path / "rows.parquet")
    scored = [i for i in range(N) if i not in invalid]
    failed = set(scored[:3])
    ifd = synthetic.ifd_scores(N, seed=22)
    scores = pa.table({
        "id": [ids[i] for i in scored],
        "status": ["invalid" if i in failed else "scored" for i in scored],
        "reason": ["prompt longer than max_length" if i in failed else None for i in scored],
        "l_cond": [None if i in failed else 1.0 for i in scored],
        "l_prior": [None if i in failed else 1.0 - float(np.log(ifd[i])) for i in scored],
        "ifd": [None if i in failed else float(ifd[i]) for i in scored],
        "n_answer_tokens": [0 if i in failed else 50 for i in scored],
        "truncated": [False] * len(scored),
    })
    (tmp_path / "round-0").mkdir()
    pq.write_table(scores, tmp_path / "round-0" / "scores.parquet")
    return tmp_path


def _run(run_dir, method="iterit", params=None, k=10, n_rank=30, **kwargs):
    summary = select_round(run_dir / "rows.parquet", run_dir / "round-0" / "scores.parquet", run_dir / "round-0",
                           method, params or IterITConfig(), k=k, n_rank=n_rank, seed=0, **kwargs)
    return summary, pq.read_table(run_dir / "round-0" / "selection.parquet").to_pylist()


def test_iterit_round_writes_every_row_with_a_reason(run_dir):
    summary, table = _run(run_dir, params=IterITConfig(features="exact"), use_ray=False)
    assert len(table) == N  # nothing disappears
    by_reason = {}
    for row in table:
        by_reason.setdefault((row["reason"] or "selected").split(":")[0], []).append(row)
    assert len(by_reason["selected"]) == 10 and len(by_reason["invalid"]) == 5 and len(by_reason["unscored"]) == 3
    assert all(r["ifd"] >= 1.0 for r in by_reason["ifd>=max"])
    assert {r["rank"] for r in by_reason["selected"]} == set(range(10))
    assert sorted(r["rank"] for r in table if r["rank"] is not None) == list(range(30))
    assert all(r["diversity"] > 0 and r["score"] == pytest.approx(r["ifd"] * r["diversity"])
               for r in by_reason["selected"])
    assert by_reason["invalid"][0]["reason"] == "invalid: empty output"
    assert by_reason["unscored"][0]["reason"] == "unscored: prompt longer than max_length"
    assert summary["selected"] == 10 and summary["reasons"]["selected"] == 10
    assert summary["mean_ifd_selected"] is not None and "seconds" not in summary  # the run records seconds

    ranked, selected = ranked_ids(run_dir / "round-0" / "selection.parquet")
    assert len(ranked) == 30 and selected == ranked[:10]
    lines = (run_dir / "round-0" / "selected.jsonl").read_text().splitlines()
    outputs = {r["id"]: r for r in pq.read_table(run_dir / "rows.parquet").to_pylist()}
    assert [json.loads(x)["output"] for x in lines] == [outputs[i]["response"] for i in selected]


def test_rescore_pool_limits_the_candidates(run_dir):
    pool = [f"row-{i:03d}" for i in range(1, 60)]
    _, table = _run(run_dir, "ifd", candidate_ids=pool)
    outside = [r for r in table if r["id"] not in pool and not (r["reason"] or "").startswith("invalid")]
    assert outside and all(r["reason"] == "not in re-score pool" for r in outside)
    assert all(r["id"] in pool for r in table if r["selected"])


def test_ray_featurisation_gives_the_same_selection(run_dir, ray_session):
    cfg = IterITConfig(features="hashed", n_features=2**18)
    _, local = _run(run_dir, params=cfg, use_ray=False)
    _, on_ray = _run(run_dir, params=cfg, use_ray=True)
    assert local == on_ray


def test_embedding_diversity_with_dedup(run_dir):
    ids = np.array([f"row-{i:03d}" for i in range(N)])
    vectors = synthetic.embeddings(N, dim=16, seed=23)
    a, b = [r["id"] for r in _run(run_dir, "ifd")[1] if r["selected"]][:2]
    vectors[int(a[4:])] = vectors[int(b[4:])]  # a planted duplicate pair, both eligible
    cfg = IterITConfig(diversity="embedding", dedup_threshold=0.99)
    _, table = _run(run_dir, params=cfg, k=N, n_rank=N, embeddings=(ids[::-1], vectors[::-1]))
    dups = [(r["id"], r["duplicate_of"]) for r in table if r["reason"] == "duplicate"]
    assert dups in ([(a, b)], [(b, a)])
    assert not any(r["selected"] for r in table if r["id"] == dups[0][0])


def test_methods_without_scores(run_dir):
    summary = select_round(run_dir / "rows.parquet", None, run_dir / "full", "full", IterITConfig(), k=1,
                           n_rank=1, seed=0)
    assert summary["selected"] == N - 5
    with pytest.raises(UserError, match="needs scores"):
        select_round(run_dir / "rows.parquet", None, run_dir / "x", "iterit", IterITConfig(), k=1, n_rank=1,
                     seed=0)
    with pytest.raises(UserError, match="embeddings"):
        _run(run_dir, "kcenter")


def test_rolling_pool_ranks_every_row_by_its_newest_score(run_dir):
    """A round re-scores its pool (here: the pool's IFDs fall after tuning); the rolling redraw
    ranks every row on its newest score, so rows from outside the old pool come back in."""
    _run(run_dir, "ifd", k=10, n_rank=30)
    old_pool, _ = ranked_ids(run_dir / "round-0" / "selection.parquet")
    round0 = pq.read_table(run_dir / "round-0" / "scores.parquet")
    rescored = round0.filter(pa.compute.is_in(round0["id"], pa.array(old_pool)))
    rescored = rescored.set_column(rescored.schema.get_field_index("ifd"), "ifd",
                                   pa.array([0.01 * (i + 1) for i in range(rescored.num_rows)]))
    (run_dir / "round-1").mkdir()
    pq.write_table(rescored, run_dir / "round-1" / "scores.parquet")
    paths = [run_dir / "round-1" / "scores.parquet", run_dir / "round-0" / "scores.parquet"]
    pool = rank_pool(run_dir / "rows.parquet", paths, "ifd", IterITConfig(), n_rank=30, seed=0)

    merged = pa.concat_tables([rescored, round0.filter(pa.compute.invert(pa.compute.is_in(
        round0["id"], pa.array(old_pool))))])
    pq.write_table(merged, run_dir / "merged.parquet")
    assert pool == rank_pool(run_dir / "rows.parquet", run_dir / "merged.parquet", "ifd", IterITConfig(), n_rank=30,
                            seed=0)
    assert len(pool) == 30 and set(pool) - set(old_pool)  # newcomers from outside the old pool
    newest = dict(zip(merged["id"].to_pylist(), merged["ifd"].to_pylist(), strict=True))
    assert [newest[i] for i in pool] == sorted((newest[i] for i in pool), reverse=True)


def test_rolling_rescore_pool_stage_writes_the_next_pool(run_dir):
    """Under rescore_pool=rolling, round 1 selects inside its pool; the re-score pool stage then
    leaves the pool redrawn from every row's newest score in round-1/rescore_pool.txt, which
    resume reads."""
    from raysel.config import load_config
    from raysel.runs import RunDir
    from raysel.stages import rescore_pool_stage, select_stage

    cfg = load_config(overrides=[f"run.dir={run_dir}", "selection.method=ifd", "iterit.rescore_pool=rolling"])
    run = RunDir.create(cfg, "test", reuse=True)
    first = select_stage(run, cfg, 0, k=10, n_rank=30)
    pool = first["ranked_ids"][:30]
    scores = pq.read_table(run_dir / "round-0" / "scores.parquet")
    rescored = scores.filter(pa.compute.is_in(scores["id"], pa.array(pool)))
    rescored = rescored.set_column(rescored.schema.get_field_index("ifd"), "ifd",
                                   pa.array([0.5] * rescored.num_rows))
    (run_dir / "round-1").mkdir()
    pq.write_table(rescored, run_dir / "round-1" / "scores.parquet")
    second = select_stage(run, cfg, 1, k=10, n_rank=30, candidate_ids=pool)
    assert set(second["selected_ids"]) <= set(pool)
    next_pool = rescore_pool_stage(run, cfg, 1, n_rank=30)
    paths = [run_dir / "round-1" / "scores.parquet", run_dir / "round-0" / "scores.parquet"]
    assert next_pool == rank_pool(run_dir / "rows.parquet", paths, "ifd", cfg.iterit, n_rank=30, seed=1)
    assert run.rescore_pool(1).read_text().split() == next_pool
    assert set(next_pool) != set(pool)
    assert select_stage(run, cfg, 1, k=10, n_rank=30, candidate_ids=pool) == second  # resumed
    assert rescore_pool_stage(run, cfg, 1, n_rank=30) == next_pool


def test_command_line_select(run_dir, ray_session, capsys):
    from raysel.cli import main
    from raysel.config import load_config
    from raysel.runs import RunDir

    run = RunDir.create(load_config(overrides=[f"run.dir={run_dir}"]), "test", reuse=True)
    run.mark_done("ingest", 0.0, {"records": N, "valid": N - 5, "invalid": 5})
    args = ["select", "--run-dir", str(run_dir), "--set", "selection.k=12", "--set", "selection.method=ifd"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["selected"] == 12 and summary["ranked"] == 36
    candidates = [f"row-{i:03d}" for i in range(1, 40)]
    (run_dir / "pool.txt").write_text("\n".join(candidates))
    assert main([*args, "--candidates", str(run_dir / "pool.txt")]) == 0
    _, selected = ranked_ids(run_dir / "round-0" / "selection.parquet")
    assert len(selected) == 12 and set(selected) <= set(candidates)
    assert main(["select", "--run-dir", str(run_dir / "missing")]) == 2


def reference_greedy(responses: list[str], ifd: np.ndarray, k: int, gamma: float, ifd_max: float = 1.0,
                     n_features: int | None = None):
    """A straightforward port of the IterIT reference: TF-IDF fitted on the eligible responses
    (IFD < max), argmax of IFD x row sum, then the picked row's columns decayed by gamma.
    With n_features, the same over hashed n-grams (raysel's hashed mode: the same collisions)."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer, TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    eligible = np.flatnonzero(ifd < ifd_max)
    vectorizer = TfidfVectorizer(ngram_range=(1, 3)) if n_features is None else make_pipeline(
        HashingVectorizer(n_features=n_features, alternate_sign=False, norm=None, ngram_range=(1, 3)),
        TfidfTransformer())
    weights = vectorizer.fit_transform([responses[i] for i in eligible]).toarray()
    picked = []
    for _ in range(k):
        scores = ifd[eligible] * weights.sum(axis=1)
        scores[picked] = -np.inf
        j = int(np.argmax(scores))
        picked.append(j)
        weights[:, weights[j] > 0] *= gamma
    return [int(eligible[j]) for j in picked]


@pytest.mark.parametrize("features, use_ray", [("exact", False), ("hashed", False), ("hashed", True)])
def test_selection_order_equals_the_reference_port(tmp_path, features, use_ray, request):
    """A third of the rows have IFD >= 1: they must not shape the idf (they used to)."""
    if use_ray:
        request.getfixturevalue("ray_session")
    n = 90
    texts = synthetic.responses(n, seed=5, vocab_size=400, max_words=60)
    ifd = np.random.default_rng(6).uniform(0.3, 0.99, size=n)
    ifd[::3] = np.random.default_rng(7).uniform(1.0, 1.6, size=len(ifd[::3]))
    ids = [f"r{i:03d}" for i in range(n)]
    pq.write_table(pa.table({
        "id": ids, "status": ["valid"] * n, "reason": [None] * n, "response": texts,
        "raw": [json.dumps({"instruction": "q", "output": t}) for t in texts]}), tmp_path / "rows.parquet")
    pq.write_table(pa.table({"id": ids, "status": ["scored"] * n, "reason": [None] * n,
                             "ifd": ifd.tolist()}), tmp_path / "scores.parquet")
    cfg = IterITConfig(features=features, n_features=2**12)  # few buckets: collisions happen
    select_round(tmp_path / "rows.parquet", tmp_path / "scores.parquet", tmp_path, "iterit", cfg, k=25, n_rank=25,
                 seed=0, use_ray=use_ray)
    ranked, _ = ranked_ids(tmp_path / "selection.parquet")
    n_features = cfg.n_features if features == "hashed" else None
    assert ranked == [ids[i] for i in reference_greedy(texts, ifd, 25, cfg.diversity_decay, n_features=n_features)]


def test_ifd_static_ranks_by_ifd_alone(run_dir):
    summary, table = _run(run_dir, "ifd_static")
    assert summary["method"] == "ifd_static"
    picked = sorted((r["rank"], r["ifd"]) for r in table if r["selected"])
    eligible = sorted((r["ifd"] for r in table if r["ifd"] is not None and r["ifd"] < 1.0
                       and r["reason"] != "unscored: prompt longer than max_length"), reverse=True)
    assert [ifd for _, ifd in picked] == eligible[:10]


def test_ifd_static_selects_the_same_rows_every_round(run_dir):
    """Round 1 of ifd_static ranks every row on round 0's scores: the same k, written again."""
    from raysel.config import load_config
    from raysel.runs import RunDir
    from raysel.stages import select_stage

    cfg = load_config(overrides=[f"run.dir={run_dir}", "selection.method=ifd_static"])
    run = RunDir.create(cfg, "test", reuse=True)
    first = select_stage(run, cfg, 0, k=10, n_rank=30)
    second = select_stage(run, cfg, 1, k=10, n_rank=30, scores_round=0)
    assert second["selected_ids"] == first["selected_ids"] and len(first["selected_ids"]) == 10
    assert pq.read_table(run_dir / "round-1" / "selection.parquet").num_rows == N


def test_selection_is_generic_over_score_columns(run_dir, monkeypatch):
    """A selector ranks on any named score (here a `reward`, as DaaR's will); selection.parquet
    carries the scores file's own columns beside the common ones, and needs no `ifd`."""
    from raysel.selection import SELECTORS, Selector
    from raysel.selection.base import Selection, no_duplicates, no_reasons

    scores = pq.read_table(run_dir / "round-0" / "scores.parquet").drop(["ifd", "l_cond", "l_prior"])
    reward = np.random.default_rng(3).random(scores.num_rows)
    pq.write_table(scores.append_column("reward", pa.array(reward)), run_dir / "reward.parquet")

    def by_reward(req):
        order = np.argsort(-req.scores["reward"], kind="stable")[:req.n_rank]
        return Selection("by_reward", order, min(req.k, len(order)), np.full(len(order), np.nan),
                         req.scores["reward"][order], no_reasons(req.n), no_duplicates(req.n))

    monkeypatch.setitem(SELECTORS, "by_reward", Selector(by_reward))
    out = run_dir / "by-reward"
    select_round(run_dir / "rows.parquet", run_dir / "reward.parquet", out, "by_reward", IterITConfig(), k=5,
                 n_rank=5, seed=0)
    table = pq.read_table(out / "selection.parquet")
    assert table.column_names[:2] == ["id", "reward"] and "ifd" not in table.column_names
    rows = [r for r in table.to_pylist() if r["reward"] is not None and not np.isnan(r["reward"])]
    best = sorted((r["reward"] for r in rows if r["reason"] is None or not r["reason"].startswith(
        ("invalid", "unscored"))), reverse=True)[:5]
    assert sorted((r["reward"] for r in rows if r["selected"]), reverse=True) == best
    with pytest.raises(UserError, match="lack the column"):
        select_round(run_dir / "rows.parquet", run_dir / "reward.parquet", out, "ifd", IterITConfig(), k=5,
                     n_rank=5, seed=0)
