"""The command line as a user meets it: help that explains, errors without tracebacks, ingest."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_explains_every_option():
    out = run("-m", "raysel.cli", "--help")
    assert out.returncode == 0
    for command in ("ingest", "score", "select", "train", "eval", "fetch-demo-model", "demo-pool"):
        assert command in out.stdout
    job = run("jobs/iterit.py", "--help")
    assert job.returncode == 0
    for option in ("--config", "--set", "--run-dir", "--resume", "selection  method, k", "daar       seed_source"):
        assert option in job.stdout
    ingest = run("-m", "raysel.cli", "ingest", "--help")
    assert "--pool" in ingest.stdout and "save_to_disk" in ingest.stdout


def test_bad_config_is_a_clear_error(tmp_path):
    out = run("jobs/iterit.py", "--set", "selection.method=best", "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert "selection.method: 'best' is not allowed; choose one of iterit" in out.stderr
    assert "Traceback" not in out.stderr
    missing = run("-m", "raysel.cli", "ingest", "--pool", str(tmp_path / "nope.jsonl"), "--run-dir",
                  str(tmp_path / "r2"), "--set", "ray.num_cpus=1")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_ingest_command_writes_rows_and_counts(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join([json.dumps({"instruction": "Q1", "output": "A1"}), "{not json",
                               json.dumps({"instruction": "Q2", "output": ""})]) + "\n")
    out = run("-m", "raysel.cli", "ingest", "--pool", str(pool), "--run-dir", str(tmp_path / "run"),
              "--set", "ray.num_cpus=1")
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout)
    assert (counts["records"], counts["valid"], counts["invalid"]) == (3, 1, 2)
    assert counts["invalid_by_reason"] == {"empty response": 1, "malformed JSON": 1}
    run_dir = tmp_path / "run"
    assert (run_dir / "rows.parquet").exists() and (run_dir / "config.yaml").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["ingest"]["records"] == 3 and "ray" in manifest["versions"]


def test_a_pool_given_by_path_is_read_whole_under_the_default_config(tmp_path):
    """The default config (configs/demo.yaml) cuts the demo pool to 500 rows; a user's own pool,
    named with --pool, must not be cut by it (it silently was)."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Q{i}", "output": f"A{i}"}) + "\n" for i in range(620)))
    out = run("-m", "raysel.cli", "ingest", "--pool", str(pool), "--run-dir", str(tmp_path / "run"),
              "--set", "ray.num_cpus=1")
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout)
    assert counts["records"] == counts["valid"] == 620 and "limit" not in counts
    cut = run("-m", "raysel.cli", "ingest", "--pool", str(pool), "--run-dir", str(tmp_path / "cut"),
              "--set", "ray.num_cpus=1", "--set", "pool.limit=100")
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert json.loads(cut.stdout)["records_present"] == 620 and "read the first 100 records" in cut.stderr
