"""The scoring stage on Ray Data: two actors give the same scores as in-process scoring, for every
row; ingestion's invalid rows are not scored but counted; a re-score subset; adapter checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysel.config import Config, ModelConfig, ScoringConfig
from raysel.models import load_model, load_tokenizer
from raysel.scoring import BatchScorer, read_embeddings, read_scores, score_pool, score_table
from raysel.scoring.stage import Scorer

WORDS = "the quick brown fox jumps over lazy dog count apples then subtract paris water".split()


def make_rows(n: int) -> list[dict]:
    """Rows as rows.parquet holds them, of very different lengths, a few invalid at ingestion,
    one whose prompt fills max_length."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 40))))
        response = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 80))))
        status, reason = ("invalid", "empty output") if i % 7 == 3 else ("valid", None)
        rows.append({"id": f"row-{i:03d}", "status": status, "reason": reason, "source": "pool.jsonl",
                     "source_row": i, "prompt": [{"role": "user", "content": prompt}], "response": response,
                     "raw": json.dumps({"instruction": prompt, "output": response})})
    rows[5]["prompt"] = [{"role": "user", "content": "apples " * 200}]  # no answer token within max_length
    return rows


def write_rows(path, rows: list[dict]):
    """A folder of two Parquet files, the way ingestion writes rows.parquet."""
    path.mkdir()
    half = len(rows) // 2
    for k, part in enumerate([rows[:half], rows[half:]]):
        pq.write_table(pa.Table.from_pylist(part), path / f"part-{k}.parquet")
    return path


@pytest.fixture(scope="module")
def rows_path(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("pool") / "rows.parquet", make_rows(30))


def tiny_config(**scoring) -> Config:
    return Config(model=ModelConfig(max_length=128),
                  scoring=ScoringConfig(dtype="float32", batch_size=4, num_actors=2, cpus_per_actor=1, **scoring))


def in_process(model_dir, rows: list[dict], cfg: Config) -> dict[str, dict]:
    model, tokenizer = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    scorer = BatchScorer(model, tokenizer, max_length=cfg.model.max_length)
    table = score_table(scorer, pa.Table.from_pylist([r for r in rows if r["status"] == "valid"]))
    return {row["id"]: row for row in table.to_pylist()}


@pytest.fixture
def all_actors_ready(ray_session):
    """Dispatch only once every actor is up, so that both get work even on a slow, busy machine
    (the tiny model scores everything before a second actor has imported torch otherwise)."""
    ctx = ray_session.data.DataContext.get_current()
    before, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 600
    yield
    ctx.wait_for_min_actors_s = before


def test_an_autoscaling_actor_pool_scores_every_row_like_in_process_scoring(ray_session, tiny_model_dir,
                                                                           rows_path, tmp_path):
    """scoring.max_actors: Ray Data's autoscaling pool (from one actor up to two) gives the same scores."""
    rows, cfg = make_rows(30), tiny_config(max_actors=2)
    cfg.scoring.num_actors = 1
    summary = score_pool(rows_path, tmp_path, str(tiny_model_dir), cfg)
    expected = in_process(tiny_model_dir, rows, cfg)
    scores = {s["id"]: s for s in read_scores(tmp_path).to_pylist()}
    assert sorted(scores) == sorted(expected) and 1 <= summary["actors_used"] <= 2
    for i, got in scores.items():
        if got["status"] == "scored":
            assert got["ifd"] == pytest.approx(expected[i]["ifd"], abs=1e-4)


def test_two_actors_score_every_row_like_in_process_scoring(all_actors_ready, tiny_model_dir, rows_path,
                                                            tmp_path):
    rows, cfg = make_rows(30), tiny_config()
    summary = score_pool(rows_path, tmp_path, str(tiny_model_dir), cfg)
    expected = in_process(tiny_model_dir, rows, cfg)

    scores = read_scores(tmp_path).to_pylist()
    assert [s["id"] for s in scores] == sorted(expected)  # every valid row once, sorted by id
    for got in scores:
        want = expected[got["id"]]
        assert (got["status"], got["reason"], got["n_answer_tokens"], got["truncated"]) == \
               (want["status"], want["reason"], want["n_answer_tokens"], want["truncated"])
        if got["status"] == "scored":
            assert (got["l_cond"], got["l_prior"], got["ifd"]) == pytest.approx(
                (want["l_cond"], want["l_prior"], want["ifd"]), abs=1e-4)
    invalid = {s["id"]: s for s in scores if s["status"] == "invalid"}
    assert list(invalid) == ["row-005"] and "max_length" in invalid["row-005"]["reason"]
    assert invalid["row-005"]["ifd"] is None

    n_excluded = sum(r["status"] == "invalid" for r in rows)
    assert summary["rows"] == 30 and summary["excluded_at_ingestion"] == n_excluded
    assert summary["scored"] + summary["invalid"] == 30 - n_excluded == summary["to_score"]
    assert summary["actors"] == summary["actors_used"] == 2  # both actors did work
    assert summary["dtype"] == "float32"

    ids, vectors = read_embeddings(tmp_path)
    assert vectors.dtype == np.float16 and vectors.shape == (summary["scored"], 64)
    assert list(ids) == sorted(k for k, v in expected.items() if v["status"] == "scored")
    want = np.stack([np.asarray(expected[i]["embedding"], dtype=np.float32) for i in ids])
    np.testing.assert_allclose(vectors.astype(np.float32), want, atol=2e-3, rtol=2e-3)


def test_rescoring_a_subset_scores_only_those_ids(ray_session, tiny_model_dir, rows_path, tmp_path):
    ids = ["row-000", "row-011", "row-003", "no-such-row"]  # row-003 is invalid at ingestion
    summary = score_pool(rows_path, tmp_path, str(tiny_model_dir), tiny_config(embeddings=False), ids=ids)
    assert read_scores(tmp_path, ["id"]).column("id").to_pylist() == ["row-000", "row-011"]
    assert summary["requested"] == 4 and summary["not_valid_or_unknown"] == 2
    assert not (tmp_path / "embeddings.parquet").exists()


def test_scorer_loads_a_lora_checkpoint_on_its_base(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    tuned = get_peft_model(load_model(str(tiny_model_dir)), lora).eval()
    tuned.save_pretrained(tmp_path / "checkpoint")
    rows = pa.Table.from_pylist([r for r in make_rows(6) if r["status"] == "valid"])

    cfg = tiny_config(embeddings=False)
    actor = Scorer(str(tmp_path / "checkpoint"), cfg, threads=1, device="cpu")  # what Ray constructs
    got = actor(rows.select(["id", "prompt", "response"])).to_pylist()
    want = score_table(BatchScorer(tuned, load_tokenizer(str(tiny_model_dir)), max_length=128,
                                   embeddings=False), rows).to_pylist()
    base = score_table(BatchScorer(load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)),
                                   max_length=128, embeddings=False), rows).to_pylist()
    assert [g["status"] for g in got] == [w["status"] for w in want] == ["scored"] * 4 + ["invalid"]
    for g, w, b in zip(got[:4], want, base, strict=False):
        assert g["l_cond"] == pytest.approx(w["l_cond"], abs=1e-4)
        assert g["l_prior"] == pytest.approx(w["l_prior"], abs=1e-4)
        assert abs(g["l_cond"] - b["l_cond"]) > 1e-3  # the adapter was applied
