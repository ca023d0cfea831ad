"""Faults (slow: `make reliability` runs them). Through the real IterIT job on the tiny model:
the driver killed with SIGKILL inside each kind of stage and resumed ends with the selections of
an undisturbed run; a run directory whose files were damaged after their markers is repaired on
resume; two runs with one seed agree, another seed changes only what randomness should. And
workers: a scorer actor or a training worker killed mid-stage is replaced, with the same result."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_iterit import JOB, ROOT, job_env, run_job, selection, uninterrupted  # noqa: F401 (a fixture)

pytestmark = pytest.mark.reliability

# (stage, seconds after it starts): inside ingestion, round 0's scoring, selection and training,
# and round 1's re-scoring with the tuned model (the kill between rounds is test_iterit's)
KILL_POINTS = [("ingest", 0.5), ("score-0", 3.0), ("select-0", 0.0), ("train-0", 8.0), ("score-1", 3.0)]


def running(run_dir: Path, stage: str) -> bool:
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return manifest.get("stages", {}).get(stage, {}).get("status") == "running"


def kill_inside(run_dir: Path, stage: str, delay: float, timeout: float = 900) -> bool:
    """Start the job, SIGKILL it (the driver and its local Ray cluster) `delay` seconds into
    `stage`; whether the stage was still unfinished when it died."""
    proc = subprocess.Popen([*JOB, "--run-dir", str(run_dir)], cwd=ROOT, env=job_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not running(run_dir, stage):
        assert proc.poll() is None, f"the job ended before {stage} started"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return not (run_dir / ".done" / f"{stage}.json").exists()


def every_row(run_dir: Path, r: int) -> list[dict]:
    """Round r's outcome for every input row (id, selected, rank, reason): one per row of rows.parquet."""
    table = pq.read_table(run_dir / f"round-{r}" / "selection.parquet", columns=["id", "selected", "rank", "reason"])
    assert table.num_rows == pq.read_table(run_dir / "rows.parquet", columns=["id"]).num_rows, "rows lost"
    return sorted(table.to_pylist(), key=lambda row: row["id"])


@pytest.mark.parametrize("stage,delay", KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_a_driver_killed_inside_a_stage_resumes_to_the_same_selections(uninterrupted, tmp_path, stage,  # noqa: F811
                                                                       delay):
    reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    inside = kill_inside(run_dir, stage, delay)
    if stage != "select-0":  # selection takes a fraction of a second: the kill may land just after it
        assert inside, f"{stage} finished before the kill"
    run_job(run_dir, "--resume")
    for r in (0, 1):  # every row's outcome, selected or not, as in the run that was never killed
        assert every_row(run_dir, r) == every_row(reference, r)
    assert json.loads((run_dir / "manifest.json").read_text())["finished"]
    assert not [p for p in run_dir.rglob(".*") if ".tmp" in p.name], "temporary files left behind"


def test_damaged_outputs_are_recomputed_on_resume(uninterrupted, tmp_path):  # noqa: F811
    reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    run_job(run_dir)
    selected = (run_dir / "round-1" / "selected.jsonl").read_text()
    (run_dir / "round-1" / "selected.jsonl").write_text(selected[:100])  # truncated after its marker
    (run_dir / "round-0" / "scores.parquet").unlink()  # deleted
    (run_dir / "round-0" / ".selection.parquet.tmp-999").write_bytes(b"half")  # a killed write
    out = run_job(run_dir, "--resume")
    assert "running the stage again" in out.stderr + out.stdout
    assert (run_dir / "round-1" / "selected.jsonl").read_text() == selected
    assert (run_dir / "round-0" / "scores.parquet").exists()
    assert not (run_dir / "round-0" / ".selection.parquet.tmp-999").exists()
    for r in (0, 1):
        assert every_row(run_dir, r) == every_row(reference, r)


def test_the_seed_changes_only_what_randomness_should(uninterrupted, tmp_path):  # noqa: F811
    import torch
    from safetensors.torch import load_file

    reference, _ = uninterrupted
    same, other = tmp_path / "same", tmp_path / "other"
    run_job(same)
    run_job(other, "--set", "run.seed=1")

    def adapter(d):
        return load_file(next((d / "round-1" / "checkpoint").glob("*.safetensors")))

    for r in (0, 1):
        assert selection(same, r) == selection(reference, r)
    a, b = adapter(same), adapter(reference)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    # IterIT's round 0 is the base model's scores and a deterministic greedy: no seed in it
    assert selection(other, 0) == selection(reference, 0)
    c = adapter(other)  # the seed orders the training batches (and LoRA's initialisation)
    assert any(not torch.allclose(c[k], b[k], rtol=1e-4, atol=1e-5) for k in c)
    random_a = run_job(tmp_path / "ra", "--set", "selection.method=random", "--set", "selection.rounds=1")
    random_b = run_job(tmp_path / "rb", "--set", "selection.method=random", "--set", "selection.rounds=1",
                       "--set", "run.seed=1")
    assert random_a.returncode == random_b.returncode == 0
    assert selection(tmp_path / "ra", 0) != selection(tmp_path / "rb", 0)


# --- killed workers ----------------------------------------------------------------------------

def watch(marker: str, seen: dict, kill_after: float | None = None, timeout: float = 300) -> threading.Thread:
    """A thread that watches the processes whose title holds `marker` (a Ray actor: Ray titles
    its processes `ray::<class>`) and that start after it does (a previous run's workers, still
    exiting, are left alone): when one is first and last seen (seen["first"], seen["last"]), and
    with `kill_after`, the pid it SIGKILLs that many seconds after the first appears (seen["killed"])."""
    import psutil

    def matching(old=frozenset()):
        return [p for p in psutil.process_iter(["cmdline"])
                if p.pid not in old and any(marker in c for c in p.info["cmdline"] or [])]

    def run():
        old = frozenset(p.pid for p in matching())
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = matching(old)
            now = time.time()
            if found:
                seen.setdefault("first", now)
                seen["last"] = now
                if kill_after is not None and "killed" not in seen and now - seen["first"] >= kill_after:
                    try:
                        found[0].kill()
                        seen["killed"] = found[0].pid
                    except psutil.NoSuchProcess:
                        pass
            elif "first" in seen and now - seen["last"] > 5:
                return  # gone for good
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_scorer_actor_killed_mid_stage_is_replaced_and_the_scores_are_exact(ray_session, tiny_model_dir,
                                                                               tmp_path):
    from test_scoring_stage import in_process, make_rows, tiny_config, write_rows

    from raysel.scoring import read_scores, score_pool

    rows = make_rows(1500)
    cfg = tiny_config()
    cfg.scoring.batch_size = 2  # many small batches: the kill lands while there is work left
    seen = {}
    watch("MapBatches(Scorer)", seen, kill_after=8.0)
    summary = score_pool(write_rows(tmp_path / "rows.parquet", rows), tmp_path / "out", str(tiny_model_dir), cfg)
    assert "killed" in seen, "no scorer actor was killed"
    expected = in_process(tiny_model_dir, rows, cfg)
    scores = {s["id"]: s for s in read_scores(tmp_path / "out").to_pylist()}
    assert sorted(scores) == sorted(expected) and summary["scored"] + summary["invalid"] == len(expected)
    for i, got in scores.items():
        assert got["status"] == expected[i]["status"]
        if got["status"] == "scored":
            assert got["ifd"] == pytest.approx(expected[i]["ifd"], abs=1e-4)


def test_a_training_worker_killed_mid_round_is_restarted_and_the_round_ends_the_same(ray_session, tiny_model_dir,
                                                                                     tmp_path):
    import torch
    from safetensors.torch import load_file
    from test_training import tiny_config, write_rows

    from raysel.training import total_steps, train_round

    rows = write_rows(tmp_path / "rows.parquet")
    cfg = tiny_config(num_workers=1, epochs=20)  # long enough a round to be killed inside
    ids = [f"row-{i:02d}" for i in range(14)]
    total = total_steps(len(ids), 1, cfg.training)
    calm_workers, seen = {}, {}
    # The first round pays one-off costs (DeepSpeed's ops, cold file caches) that the killed round
    # does not: the lifetime is measured on a second undisturbed round, or the kill can land too late.
    train_round(cfg, rows, ids, tmp_path / "warm", 0, str(tiny_model_dir), total)
    thread = watch("RayTrainWorker", calm_workers)
    calm = train_round(cfg, rows, ids, tmp_path / "calm", 0, str(tiny_model_dir), total)
    thread.join(timeout=60)
    lifetime = calm_workers["last"] - calm_workers["first"]  # the worker's life in an undisturbed round
    watch("RayTrainWorker", seen, kill_after=0.5 * lifetime)  # half way through: inside the round
    hit = train_round(cfg, rows, ids, tmp_path / "hit", 0, str(tiny_model_dir), total)
    assert "killed" in seen, "no training worker was killed"
    assert hit["steps"] == calm["steps"] == total
    a = load_file(str(Path(hit["checkpoint"]) / "adapter_model.safetensors"))
    b = load_file(str(Path(calm["checkpoint"]) / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
