"""The run directory's completion markers: they vouch for the files their stage wrote (a deleted or
truncated output makes the stage run again), and a resumed run removes what a killed one left
half-written."""

import json

import pytest

from raysel.config import load_config
from raysel.runs import RunDir, atomic_output


@pytest.fixture()
def run(tmp_path):
    return RunDir.create(load_config(None, [f"run.dir={tmp_path / 'run'}"]), "test")


def write_stage(run: RunDir, calls: list):
    """A stage that writes a file and a folder of parts, counting how often it runs."""
    def compute():
        calls.append(1)
        with atomic_output(run.round_dir(0) / "scores.parquet") as tmp:
            tmp.write_bytes(b"x" * 100)
        parts = run.round_dir(0) / "embeddings.parquet"
        parts.mkdir(exist_ok=True)
        (parts / "part-a.parquet").write_bytes(b"y" * 50)
        return {"scored": 3}
    return run.stage("score-0", compute)


def test_a_marker_records_the_files_its_stage_wrote_and_nothing_else(run):
    calls = []
    assert write_stage(run, calls) == {"scored": 3, "seconds": pytest.approx(0, abs=5)}
    marker = json.loads((run.markers / "score-0.json").read_text())
    assert marker["outputs"] == {"round-0/scores.parquet": 100, "round-0/embeddings.parquet/part-a.parquet": 50}
    assert "outputs" not in run.read_manifest()["stages"]["score-0"]
    write_stage(run, calls)
    assert len(calls) == 1  # intact: not run again


@pytest.mark.parametrize("damage", ["delete", "truncate", "delete a part"])
def test_a_damaged_output_makes_its_stage_run_again(run, damage, caplog):
    calls = []
    write_stage(run, calls)
    target = run.path / ("round-0/embeddings.parquet/part-a.parquet" if damage == "delete a part"
                         else "round-0/scores.parquet")
    if damage == "truncate":
        target.write_bytes(b"x" * 10)
    else:
        target.unlink()
    assert not run.is_done("score-0") and "running the stage again" in caplog.text
    write_stage(run, calls)
    assert len(calls) == 2 and run.is_done("score-0")
    assert (run.path / "round-0/scores.parquet").stat().st_size == 100


def test_markers_without_outputs_are_trusted(run):
    run.mark_done("ingest", 1.0, {"records": 5})  # an older run's marker, or one copied from elsewhere
    assert run.is_done("ingest") and run.stats("ingest") == {"records": 5, "seconds": 1.0}


def test_resume_removes_what_a_killed_run_left_half_written(run):
    leftovers = [".rows.parquet.tmp-4242/part-0.parquet", "round-0/.selection.parquet.tmp-17",
                 "round-0/embeddings.parquet/.0123abcd.tmp", ".features-x1y2/part.parquet",
                 "round-1/.eval-input.parquet"]
    for rel in leftovers:
        (run.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (run.path / rel).write_bytes(b"half")
    keep = run.path / "round-0" / "embeddings.parquet" / "part-b.parquet"
    keep.write_bytes(b"whole")
    RunDir.create(load_config(run.path / "config.yaml"), "test", resume=True)
    assert not any((run.path / rel.split("/")[0]).exists() for rel in leftovers if rel.startswith("."))
    assert not (run.path / "round-0/.selection.parquet.tmp-17").exists()
    assert not (run.path / "round-0/embeddings.parquet/.0123abcd.tmp").exists()
    assert not (run.path / "round-1/.eval-input.parquet").exists()
    assert keep.exists() and run.markers.exists()
