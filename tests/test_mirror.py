"""run.mirror: a copy of the run directory in object storage, checked against a real S3 API (moto's
server over HTTP, pyarrow's S3 client): pushed stage by stage, restored by --resume into an empty
run directory, stale files left out, and a failed upload made good by the next --resume."""

import json

import pyarrow as pa
import pytest

from raysel.config import Config, UserError
from raysel.runs import RunDir, write_parquet


def config(run_dir, mirror) -> Config:
    cfg = Config()
    cfg.run.dir, cfg.run.mirror = str(run_dir), mirror
    return cfg


def two_stages(run: RunDir) -> None:
    def scores():
        run.round_dir(0)
        write_parquet(pa.table({"id": ["a", "b"], "ifd": [0.5, 0.7]}), run.scores(0))
        return {"scored": 2}

    def selected():
        run.selected(0).write_text('{"id": "b"}\n')
        return {"selected": 1}

    run.stage("score-0", scores)
    run.stage("select-0", selected)


def test_each_stage_lands_in_the_mirror_and_resume_restores_an_empty_run_directory(s3, tmp_path):
    uri = s3()
    run = RunDir.create(config(tmp_path / "a", uri), "iterit")
    two_stages(run)
    there = run.mirror.sizes()
    for rel in ("config.yaml", "manifest.json", ".done/score-0.json", ".done/select-0.json",
                "round-0/scores.parquet", "round-0/selected.jsonl"):
        assert there[rel] == (run.path / rel).stat().st_size, rel

    # a new cluster: the same run, an empty run directory
    again = RunDir.create(config(tmp_path / "b", uri), "iterit", resume=True)
    assert again.is_done("score-0") and again.is_done("select-0")
    assert again.stats("select-0")["selected"] == 1
    assert (again.path / "round-0" / "selected.jsonl").read_text() == '{"id": "b"}\n'
    assert (again.path / "round-0" / "scores.parquet").read_bytes() == run.scores(0).read_bytes()


def test_restore_brings_back_only_what_a_marker_vouches_for(s3, tmp_path):
    uri = s3()
    run = RunDir.create(config(tmp_path / "a", uri), "iterit")
    two_stages(run)
    stale = run.round_dir(0) / "embeddings.parquet" / "part-old.parquet"  # an earlier attempt's part
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    run.mirror.push(run.path, ["round-0/embeddings.parquet/part-old.parquet"])
    run.mirror.fs.delete_file(f"{run.mirror.root}/round-0/selected.jsonl")  # lost from the store

    again = RunDir.create(config(tmp_path / "b", uri), "iterit", resume=True)
    assert not (again.path / "round-0" / "embeddings.parquet").exists()
    assert again.is_done("score-0")
    assert not again.is_done("select-0"), "its file is gone from the mirror: the stage runs again"


def test_resume_on_a_new_machine_takes_the_runs_own_config_from_the_mirror(s3, tmp_path):
    import argparse

    from raysel.job_args import config_from_args

    uri = s3()
    cfg = config(tmp_path / "a", uri)
    cfg.selection.k = 7
    RunDir.create(cfg, "iterit")
    args = argparse.Namespace(run_dir=str(tmp_path / "b"), overrides=[f"run.mirror={uri}"], config=None, resume=True)
    resumed = config_from_args(args)
    assert resumed.selection.k == 7 and resumed.run.dir == str(tmp_path / "b")
    again = RunDir.create(resumed, "iterit", resume=True)  # the config just fetched is the run's: accepted
    assert again.config_changes == {}


def test_a_fresh_run_refuses_a_mirror_that_holds_a_run(s3, tmp_path):
    uri = s3()
    RunDir.create(config(tmp_path / "a", uri), "iterit")
    with pytest.raises(FileExistsError, match="already holds a run"):
        RunDir.create(config(tmp_path / "b", uri), "iterit")


def test_resume_pushes_what_a_failed_upload_left_out(s3, tmp_path):
    """A run without a mirror (as after an upload that failed) gains one at --resume: every
    completed stage goes up, and restoring from it gives the same run."""
    run = RunDir.create(config(tmp_path / "a", None), "iterit")
    two_stages(run)
    uri = s3()
    resumed = RunDir.create(config(tmp_path / "a", uri), "iterit", resume=True)
    assert resumed.mirror.sizes().keys() >= {".done/score-0.json", ".done/select-0.json", "round-0/scores.parquet",
                                              "round-0/selected.jsonl", "config.yaml", "manifest.json"}
    assert resumed.mirror.sync(resumed.path) == 0, "nothing left to push"
    restored = RunDir.create(config(tmp_path / "b", uri), "iterit", resume=True)
    assert restored.is_done("select-0")
    assert json.loads((restored.path / "manifest.json").read_text())["stages"]["select-0"]["status"] == "done"


def test_an_unreachable_mirror_is_a_one_line_error_before_any_work(tmp_path):
    bad = "s3://raysel/runs/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    with pytest.raises(UserError, match="run.mirror s3://raysel/runs/x: could not"):
        RunDir.create(config(tmp_path / "a", bad), "iterit")
    with pytest.raises(UserError, match="is not a storage URI"):
        RunDir.create(config(tmp_path / "b", "nosuchscheme://x"), "iterit")
