"""The DaaR job end to end on the tiny model: artifacts per round, every row accounted for, the
budget and the per-domain quotas kept, a second round on the tuned model, resume after a real kill."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from test_iterit import ROOT, _kill_after, job_env, run_job, selection
from test_report import check_report

from raysel.daar.stage import read_probe
from raysel.selection.daar import quotas

JOB = [sys.executable, "jobs/daar.py", "--config", "configs/tiny.yaml", "--set", "selection.method=daar",
       "--set", "daar.select=per_domain"]


@pytest.fixture(scope="module")
def daar_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("daar") / "run"
    out = run_job(run_dir, "--set", "eval.heldout=[demo]", "--set", "eval.max_new_tokens=8", job=JOB)
    return run_dir, out.stdout


def stats(run_dir, stage):
    return json.loads((run_dir / ".done" / f"{stage}.json").read_text())


def test_two_rounds_account_for_every_row_and_keep_the_budget(daar_run):
    run_dir, stdout = daar_run
    rows = pq.read_table(run_dir / "rows.parquet").num_rows
    assert (run_dir / "seeds.jsonl").read_text().count("\n") == 40
    for r in (0, 1):
        d = run_dir / f"round-{r}"
        for name in ("probe.parquet", "probe_labels.parquet", "heads.safetensors", "scores.parquet",
                     "selection.parquet", "selected.jsonl", "checkpoint"):
            assert (d / name).exists(), f"round {r}: {name} missing"
        table = pq.read_table(d / "selection.parquet").to_pylist()
        assert len(table) == rows, "one row per input row"
        selected = [t for t in table if t["selected"]]
        assert len(selected) == 20 == len((d / "selected.jsonl").read_text().splitlines())
        assert all(t["reason"] is None for t in selected)
        assert all(t["reason"] for t in table if not t["selected"])
        assert all(t["pseudo_domain"] and t["reward"] is not None for t in table if t["reason"] != "invalid")
        h = stats(run_dir, f"heads-{r}")
        for key in ("domain_val_accuracy", "reward_val_mse", "reward_val_mse_of_mean", "probe_label_counts"):
            assert key in h
        assert sum(h["probe_label_counts"].values()) == stats(run_dir, f"probe-{r}")["probe_rows"]
    assert "round 1: selected 20" in stdout
    evaluated = json.loads((run_dir / "eval.json").read_text())  # the last checkpoint, after the last round
    assert evaluated["model"] == str(run_dir / "round-1" / "checkpoint")
    assert set(evaluated["by_domain"]) == {"arithmetic", "code", "factual", "reasoning"}
    assert evaluated["by_domain"]["arithmetic"]["checked"] == evaluated["by_domain"]["arithmetic"]["scored"] > 0
    assert pq.read_table(run_dir / "eval.parquet").num_rows == evaluated["overall"]["rows"]
    assert "held-out loss by domain: arithmetic" in stdout


def test_the_report_shows_rewards_pseudo_domains_training_and_held_out_results(daar_run):
    run_dir, _ = daar_run
    text = check_report(run_dir, {"scores", "selection", "training", "eval", "timings"})
    assert "distribution of `reward`" in text and "pseudo-domain mix" in text and "domain mix" in text
    for r in (0, 1):
        train = stats(run_dir, f"train-{r}")
        assert len(train["losses"]) == train["steps"] > 0  # the loss curve's points
    assert "| arithmetic | 50 |" in text  # the held-out table


def test_per_domain_selection_meets_its_quotas(daar_run):
    run_dir, _ = daar_run
    for r in (0, 1):
        table = pq.read_table(run_dir / f"round-{r}" / "selection.parquet").to_pylist()
        available, picked = {}, {}
        for t in table:
            if t["pseudo_domain"] is not None:
                available[t["pseudo_domain"]] = available.get(t["pseudo_domain"], 0) + 1
                picked[t["pseudo_domain"]] = picked.get(t["pseudo_domain"], 0) + t["selected"]
        want = quotas(available, 20, {})
        assert picked == want
        assert stats(run_dir, f"select-{r}")["per_domain"] == {d: n for d, n in want.items() if n}


def test_round_one_embeds_with_the_tuned_model(daar_run):
    run_dir, _ = daar_run
    assert stats(run_dir, "probe-0")["model"].endswith("tiny-model")
    assert stats(run_dir, "probe-1")["model"] == str(run_dir / "round-0" / "checkpoint")
    r0 = read_probe(run_dir / "round-0" / "probe.parquet")["probe"].to_pylist()
    r1 = read_probe(run_dir / "round-1" / "probe.parquet")["probe"].to_pylist()
    assert r0 != r1, "the tuned model's LoRA changes the first layers' features"
    for r in (0, 1):  # the actors wrote the features as parts; each row once
        folder = run_dir / f"round-{r}" / "probe.parquet"
        assert folder.is_dir() and len(list(folder.glob("part-*.parquet"))) > 1
        ids = read_probe(folder)["id"].to_pylist()
        assert len(ids) == len(set(ids)) == stats(run_dir, f"probe-{r}")["probe_rows"] + 40


@pytest.mark.reliability
def test_resume_after_a_kill_reproduces_round_zero(daar_run, tmp_path):
    reference, _ = daar_run
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*JOB, "--run-dir", str(run_dir), "--set", "selection.rounds=1"], cwd=ROOT,
                            env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _kill_after(run_dir, "heads-0.json", proc)
    assert not (run_dir / ".done" / "reward-0.json").exists(), "killed before the reward pass"
    run_job(run_dir, "--resume", "--set", "selection.rounds=1", job=JOB)
    assert selection(run_dir, 0) == selection(reference, 0)
    a = pq.read_table(run_dir / "round-0" / "scores.parquet")
    b = pq.read_table(reference / "round-0" / "scores.parquet")
    assert a["id"].to_pylist() == b["id"].to_pylist()
    assert a["pseudo_domain"].to_pylist() == b["pseudo_domain"].to_pylist()
    for x, y in zip(a["reward"].to_pylist(), b["reward"].to_pylist(), strict=True):
        assert x == pytest.approx(y, abs=1e-6)


def test_daar_refuses_another_method_and_a_probe_deeper_than_the_model(tmp_path):
    base = [sys.executable, "jobs/daar.py", "--config", "configs/tiny.yaml"]
    out = subprocess.run([*base, "--run-dir", str(tmp_path / "a")], cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "selection.method=daar" in out.stderr
    out = subprocess.run([*base, "--set", "selection.method=daar", "--set", "daar.probe_layers=5",
                          "--run-dir", str(tmp_path / "b")], cwd=ROOT, env=job_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "daar.probe_layers=5" in out.stderr and "2 decoder layers" in out.stderr


def test_synthesised_seeds_run_through_the_job_and_a_useless_model_is_a_clear_error(tmp_path):
    # the tiny random model writes no parsable pair: the job must say so, naming the domain and the fixes
    out = subprocess.run([*JOB, "--run-dir", str(tmp_path / "run"), "--set", "daar.seed_source=synthesize",
                          "--set", "daar.domains=[math: sums of two numbers, chat: small talk]",
                          "--set", "daar.synth_max_attempts=2"],
                         cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "no usable seed for domain" in out.stderr and "daar.seed_source=file" in out.stderr
    assert not (tmp_path / "run" / ".done" / "seeds.json").exists()
