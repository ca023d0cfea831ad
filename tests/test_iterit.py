"""The IterIT job end to end on the tiny model: artifacts per round, counts that reconcile,
resume after a real kill, and submission to a real Ray cluster with `ray job submit`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
JOB = [sys.executable, "jobs/iterit.py", "--config", "configs/tiny.yaml"]


def job_env():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def run_job(run_dir, *extra, timeout=900, job=JOB):
    out = subprocess.run([*job, "--run-dir", str(run_dir), *extra], cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, s3):
    """The tiny IterIT job, two rounds, copied as it runs to a run.mirror in (local) S3."""
    run_dir = tmp_path_factory.mktemp("iterit") / "run"
    out = run_job(run_dir, "--set", f"run.mirror={s3()}")
    return run_dir, out.stdout


def selection(run_dir, r):
    table = pq.read_table(run_dir / f"round-{r}" / "selection.parquet").to_pylist()
    return sorted((row["rank"], row["id"]) for row in table if row["selected"])


def test_two_rounds_leave_every_artifact(uninterrupted):
    run_dir, stdout = uninterrupted
    for name in ("config.yaml", "manifest.json", "rows.parquet"):
        assert (run_dir / name).exists()
    n_rows = pq.read_table(run_dir / "rows.parquet").num_rows
    assert n_rows == 200  # configs/tiny.yaml: pool.limit
    for r in (0, 1):
        rd = run_dir / f"round-{r}"
        for name in ("scores.parquet", "selection.parquet", "selected.jsonl", "checkpoint"):
            assert (rd / name).exists(), rd / name
        sel = pq.read_table(rd / "selection.parquet").to_pylist()
        assert len(sel) == n_rows, "every input row has a status in every round"
        assert sum(row["selected"] for row in sel) == 20
        assert all(row["reason"] for row in sel if not row["selected"])
        lines = (rd / "selected.jsonl").read_text().splitlines()
        assert [json.loads(x)["id"] for x in lines] == [i for _, i in selection(run_dir, r)]
        assert f"round {r}: selected 20" in stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["finished"] and manifest["stages"]["train-1"]["status"] == "done"
    from raysel.runs import RunDir

    done = RunDir(run_dir)  # every marker still vouches for its files: a resume would redo nothing
    assert all(done.is_done(stage) for stage in manifest["stages"])


def test_the_mirror_holds_every_completed_stage_and_the_report(uninterrupted):
    from raysel.config import load_config
    from raysel.mirror import Mirror
    from raysel.runs import RunDir

    run_dir, _ = uninterrupted
    mirror = Mirror(load_config(run_dir / "config.yaml").run.mirror)
    there, run = mirror.sizes(), RunDir(run_dir)
    vouched = {rel: size for marker in (run_dir / ".done").glob("*.json")
               for rel, size in json.loads(marker.read_text())["outputs"].items()}
    assert any(rel.startswith("round-1/checkpoint/") for rel in vouched)
    for rel, size in vouched.items():
        assert there.get(rel) == size, rel
    for rel in ("config.yaml", "manifest.json", "report.md", ".done/train-1.json"):
        assert there.get(rel) == (run_dir / rel).stat().st_size, rel
    assert json.loads(run.manifest_path.read_text())["finished"]


def test_the_finished_run_writes_its_report(uninterrupted):
    from test_report import check_report

    run_dir, _ = uninterrupted
    text = check_report(run_dir, {"scores", "selection", "training", "timings"})
    assert "distribution of `ifd`" in text and "Not evaluated" in text
    assert "regenerate: `raysel report" in text


def test_round_one_scores_with_the_tuned_model(uninterrupted):
    run_dir, _ = uninterrupted
    s0 = {r["id"]: r for r in pq.read_table(run_dir / "round-0" / "scores.parquet").to_pylist()}
    s1 = pq.read_table(run_dir / "round-1" / "scores.parquet").to_pylist()
    ranked0 = [i for _, i in sorted((r["rank"], r["id"]) for r in pq.read_table(
        run_dir / "round-0" / "selection.parquet").to_pylist() if r["rank"] is not None)]
    # the fixed re-score pool: the rescore_factor (3) x k (20) best ranked at round 0
    assert sorted(r["id"] for r in s1) == sorted(ranked0[:60])
    diffs = [abs(r["l_cond"] - s0[r["id"]]["l_cond"]) for r in s1 if r["status"] == "scored"]
    assert max(diffs) > 1e-4, "round 1 must score with round 0's weights, not the base model"


def test_resume_keeps_the_runs_own_config(uninterrupted):
    """--resume without --config continues with the run's config.yaml; a change that would alter
    results is refused with the fields named, and config.yaml is never rewritten."""
    run_dir, _ = uninterrupted
    saved = (run_dir / "config.yaml").read_bytes()
    resume = [sys.executable, "jobs/iterit.py", "--run-dir", str(run_dir), "--resume"]
    out = subprocess.run([*resume, "--set", "selection.k=30"], cwd=ROOT, env=job_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "selection.k (20.0 -> 30.0)" in out.stderr
    out = subprocess.run(resume, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "round 1: selected 20" in out.stdout  # the tiny config's k, not the demo's
    assert (run_dir / "config.yaml").read_bytes() == saved


@pytest.mark.reliability  # a second whole job; test_round_plans checks the plan in the suite
def test_rescore_pool_all_ranks_every_row_in_later_rounds(tmp_path):
    """With `all`, round 1 scores and ranks every valid row, so its selection can (and here does)
    hold rows outside round 0's top rescore_factor * k (it used to select from those only)."""
    run_dir = tmp_path / "run"
    run_job(run_dir, "--set", "iterit.rescore_pool=all", "--set", "iterit.rescore_factor=1")
    top0 = {row["id"] for row in pq.read_table(run_dir / "round-0" / "selection.parquet").to_pylist()
            if row["rank"] is not None}
    assert len(top0) == 20  # rescore_factor 1: round 0 ranks k rows
    rows = pq.read_table(run_dir / "round-1" / "selection.parquet").to_pylist()
    valid = {r["id"] for r in pq.read_table(run_dir / "rows.parquet").to_pylist() if r["status"] == "valid"}
    assert {r["id"] for r in pq.read_table(run_dir / "round-1" / "scores.parquet").to_pylist()} == valid
    assert not any(r["reason"] == "not in re-score pool" for r in rows)
    assert {i for _, i in selection(run_dir, 1)} - top0


def test_budget_is_one_plan_for_the_loop_and_the_command_line():
    from raysel.config import load_config
    from raysel.loops.plan import Budget, plan_budget

    demo = load_config(None)  # k 4% of the valid rows, 3 rounds, re-score pool 3k, 8 rows a step
    assert plan_budget(demo, 494) == Budget(k=20, rounds=3, n_rank=60, total_steps=9)
    full = load_config(None, ["selection.method=full"])
    assert plan_budget(full, 494) == Budget(k=494, rounds=1, n_rank=494, total_steps=62)
    assert plan_budget(load_config(None, ["selection.k=300"]), 494).n_rank == 494  # capped at the pool


def test_round_plans():
    """What each round scores and ranks (the loop follows these plans; the runs above show it)."""
    from raysel.loops.plan import RoundPlan, plan_round

    pool = ["a", "b"]
    assert plan_round("iterit", "fixed", 0, None) == RoundPlan(True, None, 0)
    assert plan_round("iterit", "fixed", 1, pool) == RoundPlan(True, pool, 1)
    assert plan_round("iterit", "rolling", 2, pool) == RoundPlan(True, pool, 2)
    assert plan_round("iterit", "all", 1, pool) == RoundPlan(True, None, 1)  # ranks every row
    assert plan_round("ifd", "fixed", 1, pool) == RoundPlan(True, pool, 1)
    assert plan_round("ifd_static", "fixed", 0, None) == RoundPlan(True, None, 0)
    assert plan_round("ifd_static", "fixed", 1, pool) == RoundPlan(False, None, 0)  # base model's scores
    assert plan_round("random", "fixed", 1, pool) == RoundPlan(False, pool, 1)


def _kill_after(run_dir: Path, marker: str, proc: subprocess.Popen, timeout=900, pushed=None):
    """Kill the job once `marker` is written (and, given a run.mirror, pushed to it)."""
    deadline = time.time() + timeout
    while not (run_dir / ".done" / marker).exists() or (pushed and f".done/{marker}" not in pushed.sizes()):
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    proc.wait()


@pytest.mark.reliability  # with the kills inside each stage in test_faults.py
def test_a_run_killed_with_its_disk_lost_resumes_from_its_mirror(uninterrupted, tmp_path, s3):
    """The driver killed between rounds and the run directory lost with its machine (a spot
    cluster gone): a new, empty run directory resumes from run.mirror to the same run."""
    reference, _ = uninterrupted
    lost, run_dir, mirror = tmp_path / "lost", tmp_path / "run", s3()
    proc = subprocess.Popen([*JOB, "--run-dir", str(lost), "--set", f"run.mirror={mirror}"], cwd=ROOT,
                            env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    from raysel.mirror import Mirror

    _kill_after(lost, "train-0.json", proc, pushed=Mirror(mirror))  # once round 0 is in the mirror
    assert not (lost / ".done" / "train-1.json").exists(), "killed during round 1"
    shutil.rmtree(lost)
    # no --config: the run's own config comes from the mirror too
    out = run_job(run_dir, "--resume", "--set", f"run.mirror={mirror}", job=[sys.executable, "jobs/iterit.py"])
    assert "restored" in out.stderr
    for stage in ("ingest", "score-0", "select-0", "train-0"):  # restored, not recomputed
        assert f"stage {stage} done" not in out.stderr
    for r in (0, 1):
        assert selection(run_dir, r) == selection(reference, r)
    import torch
    from safetensors.torch import load_file

    def weights(d):
        return load_file(next((d / "round-1" / "checkpoint").glob("*.safetensors")))

    a, b = weights(run_dir), weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_to_a_running_cluster(tmp_path):
    import secrets

    ray_bin = str(Path(sys.executable).parent / "ray")
    # `ray start` turns token authentication on; give the cluster and the client the same token.
    env = {**job_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # Every port the head opens is a free one: a Ray cluster already running on this machine (the
    # suite's shared session) holds the defaults, and its dashboard agent would keep ours from starting.
    gcs, dash, agent, agent_grpc, metrics, runtime_env = (_free_port() for _ in range(6))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
                             f"--temp-dir={temp}"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "run"
    try:
        address = f"http://127.0.0.1:{dash}"
        _wait_for_dashboard(address, head)
        submit = [ray_bin, "job", "submit", "--address", address, "--working-dir", ".", "--", "python",
                  "jobs/iterit.py", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), "--set",
                  "selection.rounds=1"]
        for _ in range(12):  # the job agent can come up some seconds after the dashboard answers
            out = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent to submit job" not in out.stderr + out.stdout:
                break
            time.sleep(5)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        assert "succeeded" in out.stdout
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    assert (run_dir / "round-0" / "checkpoint").exists()
    assert json.loads((run_dir / "manifest.json").read_text())["finished"]


def _wait_for_dashboard(address: str, head: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert head.poll() is None, f"ray start --head exited with {head.returncode}"
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:  # it answers (401 without the token): it is up
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError("the Ray dashboard did not come up")
