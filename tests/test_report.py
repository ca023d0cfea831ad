"""Run reports (raysel/report.py) and progress lines (raysel/progress.py). The reports of real
runs are checked by the job tests (test_iterit.py, test_daar_job.py) with `check_report`."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysel import progress as progress_module
from raysel.progress import Progress
from raysel.report import write_report

ROOT = Path(__file__).resolve().parent.parent


def check_report(run_dir: Path, figures: set[str]) -> str:
    """report.md exists, links exactly `figures`, each a PNG that loads, and its row accounting
    matches selection.parquet round by round. Returns the report's text."""
    import matplotlib.image

    text = (run_dir / "report.md").read_text()
    linked = re.findall(r"!\[[^]]*\]\(report/([^)]+)\.png\)", text)
    assert set(linked) == figures, linked
    for name in linked:
        image = matplotlib.image.imread(run_dir / "report" / f"{name}.png")
        assert image.shape[0] > 200 and image.shape[1] > 400, (name, image.shape)
    n_rows = pq.read_table(run_dir / "rows.parquet").num_rows
    r = 0
    while (run_dir / f"round-{r}" / "selection.parquet").exists():
        sel = pq.read_table(run_dir / f"round-{r}" / "selection.parquet").to_pylist()
        picked = sum(s["selected"] for s in sel)
        plain = sum(1 for s in sel if s["reason"] == "not selected")
        assert re.search(rf"^\| {r} \| {picked} \| {plain} \| .* \| {n_rows} \| yes \|$", text, re.M), r
        r += 1
    assert r > 0
    return text


# --- reports -----------------------------------------------------------------------------------

def test_a_run_stopped_after_ingestion_still_gets_a_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"job": "iterit", "stages": {"ingest": {"seconds": 1.5}}}))
    (run / "config.yaml").write_text("selection:\n  method: iterit\n")
    rows = pa.table({"id": ["a", "b", "c"], "status": ["valid", "valid", "invalid"],
                     "reason": [None, None, "empty response"], "raw": ['{"domain": "x"}'] * 3})
    pq.write_table(rows, run / "rows.parquet")
    text = write_report(run).read_text()
    assert "not finished" in text
    assert "3 input rows: 2 valid, 1 excluded at ingestion; 1 empty response." in text
    assert "No round has finished training." in text and "Not evaluated" in text
    assert (run / "report" / "timings.png").exists()


def test_raysel_report_on_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raysel.cli", "report", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "is not a run directory" in out.stderr and "Traceback" not in out.stderr


# --- progress ----------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", c)
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    return c


def test_progress_off_a_terminal_logs_at_most_once_an_interval(clock, caplog):
    caplog.set_level(logging.INFO, logger="raysel.progress")
    with Progress(1000, "scoring", "rows", interval=60) as p:
        for _ in range(1000):  # one row every 0.5 s: 500 s in all
            clock.now += 0.5
            p.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 9  # one a minute and the final one, not a thousand
    assert lines[0] == "scoring: 120/1000 rows (12%), 2 rows/s, 7m20s left"
    assert lines[-1] == "scoring: 1000/1000 rows (100%), 2 rows/s, took 8m20s"


def test_progress_lines_carry_a_note_and_slow_rates_read_as_seconds_per_unit(clock, caplog):
    caplog.set_level(logging.INFO, logger="raysel.progress")
    p = Progress(40, "training", "steps", interval=1e9)
    clock.now = 30.0
    p.update(1, note="loss 2.1000")
    p.line()
    assert caplog.records[-1].getMessage() == "training: 1/40 steps (2%), 30 s per step, 19m30s left, loss 2.1000"


def test_progress_for_ray_data_passes_stays_quiet_on_a_terminal(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="raysel.progress")
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    with Progress(10, "scoring", terminal_bar=False, interval=0) as p:
        p.update(10)
    assert not caplog.records  # Ray Data draws its own bar there


def test_the_report_shows_each_rounds_mixture_quotas(tmp_path):
    from raysel.config import IterITConfig
    from raysel.selection.stage import select_round

    run = tmp_path / "run"
    (run / "round-0").mkdir(parents=True)
    n = 12
    rows = pa.table({"id": [f"r{i:02d}" for i in range(n)], "status": ["valid"] * n, "reason": [None] * n,
                     "source": ["web.jsonl", "code.jsonl"] * 6, "response": ["x"] * n,
                     "raw": [json.dumps({"domain": d}) for d in ["a", "b", "c"] * 4]})
    pq.write_table(rows, run / "rows.parquet")
    summary = select_round(run / "rows.parquet", None, run / "round-0", "random", IterITConfig(), k=4, n_rank=4,
                           seed=0, mixture=("source", {"web.jsonl": 1}))
    (run / "manifest.json").write_text(json.dumps({"job": "iterit", "stages": {"select-0": summary}}))
    (run / "config.yaml").write_text("selection:\n  method: random\n  quota_field: source\n  quotas: {web.jsonl: 1}\n")
    text = write_report(run).read_text()
    assert "Mixture quotas on `source`" in text
    assert "| 0 | web.jsonl | 1 | 6 | 1 |" in text and "| 0 | code.jsonl | 4 | 6 | 3 |" in text
