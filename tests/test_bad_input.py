"""Bad input through the real IterIT job on the tiny model (slow: `make reliability`). Row problems
end as `invalid` rows with a reason (or, for problems only the model sees, `unscored` in the
selection), one row per input record; whole-input problems end the job with one line naming the
problem and no traceback."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_iterit import ROOT, job_env

pytestmark = pytest.mark.reliability
TINY = ["--config", "configs/tiny.yaml", "--set", "selection.rounds=1", "--set", "selection.k=10"]
JOB = [sys.executable, "jobs/iterit.py", *TINY]
LONG = "word " * 400  # past the tiny config's max_length of 256 tokens


def good(i: int) -> dict:
    return {"id": f"good-{i}", "instruction": f"What is {i} plus {i}?", "input": "", "output": f"{i} + {i} = {2 * i}."}


# (id, the line as written, the reason the row must carry: at ingestion, or in the selection)
ROW_KINDS = [
    ("malformed", b'{"id": "malformed", "instruction": "x", ', "malformed JSON"),
    ("types", json.dumps({"id": "types", "instruction": 5, "output": "x"}), "field 'instruction' is not a string"),
    ("no-output", json.dumps({"id": "no-output", "instruction": "x"}), "missing field 'output'"),
    ("empty", json.dumps({"id": "empty", "instruction": "x", "output": ""}), "empty response"),
    ("blank", json.dumps({"id": "blank", "instruction": "x", "output": " \t\n "}), "empty response"),
    ("bytes", b'{"id": "bytes", "instruction": "\xff\xfe", "output": "x"}', "undecodable bytes"),
    ("nul", b'{"id": "nul", "instruction": "a\x00b", "output": "x"}', "malformed JSON"),
    ("good-1", json.dumps(good(1)), "duplicate id 'good-1'"),  # the second good-1 (the first is below)
    ("7", json.dumps({**good(7), "id": 7}), "duplicate id '7'"),  # an int id equal to a string one
    ("roles", json.dumps({"id": "roles", "messages": [{"role": "assistant", "content": "Hi"},
                                                      {"role": "user", "content": "Q"},
                                                      {"role": "assistant", "content": "A"}]}),
     "messages are not an optional system turn"),
    ("no-assistant", json.dumps({"id": "no-assistant", "messages": [{"role": "user", "content": "Q"}]}),
     "last message is not from the assistant"),
    ("array", json.dumps([1, 2, 3]), "record is not a JSON object"),
    ("long-prompt", json.dumps({"id": "long-prompt", "instruction": LONG, "output": "Short."}),
     "unscored: "),  # the prompt fills max_length: no answer token to score
    ("huge-line", json.dumps({"id": "huge-line", "instruction": "Summarise.", "output": "z" * 10_000_000}), None),
]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    pool = tmp_path_factory.mktemp("pool")
    lines = [json.dumps(good(i)).encode() for i in range(40)] + [json.dumps({**good(7), "id": "7"}).encode()]
    lines += [line if isinstance(line, bytes) else line.encode() for _, line, _ in ROW_KINDS]
    (pool / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    crlf = [json.dumps(good(i)) for i in range(100, 110)]
    (pool / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(crlf).encode() + b"\r\n")  # a BOM, CRLF ends
    (pool / "c.jsonl").write_bytes(b"")  # an empty file among good ones
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": ["a1", "a2"]}), pool / "d.parquet")  # no fields
    run_dir = tmp_path_factory.mktemp("run") / "run"
    out = subprocess.run([*JOB, "--set", f"pool.path={pool}", "--run-dir", str(run_dir)], cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-5000:]
    return run_dir, len(lines) + len(crlf) + 2


def test_every_record_has_one_row_and_bad_rows_say_why(bad_run):
    run_dir, n_records = bad_run
    rows = pq.read_table(run_dir / "rows.parquet").to_pylist()
    assert len(rows) == n_records
    assert len({r["id"] for r in rows}) == len(rows)
    selection = {r["id"]: r for r in pq.read_table(run_dir / "round-0" / "selection.parquet").to_pylist()}
    assert set(selection) == {r["id"] for r in rows}
    by_source = {(r["source"].rsplit("/", 1)[-1], r["source_row"]): r for r in rows}
    for i, (_, _, reason) in enumerate(ROW_KINDS):
        row = by_source[("a.jsonl", 41 + i)]
        final = selection[row["id"]]["reason"] or "selected"
        if reason is None:
            assert row["status"] == "valid", row["id"]
        elif reason.startswith("unscored"):
            assert row["status"] == "valid" and final.startswith(reason), (row["id"], final)
        else:
            assert row["status"] == "invalid" and row["reason"].startswith(reason), (row["id"], row["reason"])
            assert final == f"invalid: {row['reason']}"
    from raysel.scoring import read_scores

    huge = by_source[("a.jsonl", 41 + [k for k, _, _ in ROW_KINDS].index("huge-line"))]
    scored = {s["id"]: s for s in read_scores(run_dir / "round-0").to_pylist()}[huge["id"]]
    assert scored["status"] == "scored" and scored["truncated"], scored  # a response past max_length: cut, flagged
    crlf = [r for r in rows if r["source"].endswith("b.jsonl")]
    assert len(crlf) == 10 and all(r["status"] == "valid" and r["id"].startswith("good-1") for r in crlf)
    assert not any(r["response"].endswith("\r") for r in crlf)
    parquet = [r for r in rows if r["source"].endswith("d.parquet")]
    assert len(parquet) == 2 and all(r["reason"].startswith("missing field") for r in parquet)
    counts = json.loads((run_dir / "manifest.json").read_text())["counts"]
    assert counts["records"] == n_records == counts["valid"] + counts["invalid"]


WHOLE_INPUT = [  # (what to pass, words the one-line error must contain)
    (["--set", "pool.path=/no/such/pool.jsonl"], "does not exist"),
    (["--set", "pool.path={tmp}/empty.jsonl"], "no records"),
    (["--set", "pool.path={tmp}/notes"], "no jsonl/json/parquet files"),
    (["--set", "selection.colour=red"], "unknown field selection.colour"),
    (["--set", "selection.k=-3"], "selection.k"),
    (["--set", "training.lora_r=0"], "training.lora_r"),
    (["--set", "model.path={tmp}/notes"], "is not a model"),
    (["--set", "model.path={tmp}/missing-model"], "does not exist"),
    (["--config", "{tmp}/list.yaml"], "mapping"),
]


@pytest.mark.parametrize("args,words", WHOLE_INPUT, ids=[w for _, w in WHOLE_INPUT])
def test_a_whole_input_problem_is_one_line_without_a_traceback(tmp_path, args, words):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not data")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    job = JOB[:2] if args[0] == "--config" else JOB  # a case with a config file of its own
    out = subprocess.run([*job, *[a.format(tmp=tmp_path) for a in args], "--run-dir", str(tmp_path / "run")],
                         cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and words in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("iterit: error:")
