"""Pool ingestion: every record ends in rows.parquet exactly once, bad ones with the right reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysel.config import PoolConfig
from raysel.pool import PoolError, ingest, instruction_and_input, list_input_files, normalise, read_rows

GOOD = {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5."}

# (line as written, expected reason prefix or None for a valid row)
LINES = [
    (json.dumps({**GOOD, "id": "a"}), None),
    (json.dumps({"id": "b", "instruction": "Name a colour.", "input": "Warm one.", "output": "Red."}), None),
    (json.dumps({"instruction": "No id here.", "output": "Hashed id."}), None),
    (json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                 "id": "chat1"}), None),
    ('{"id": "m", "instruction": "broken", ', "malformed JSON"),
    (b'{"id": "u", "instruction": "bad \xff bytes", "output": "x"}', "undecodable bytes"),
    (json.dumps({"id": "c", "output": "No instruction."}), "missing field 'instruction'"),
    (json.dumps({"id": "d", "instruction": "No output."}), "missing field 'output'"),
    (json.dumps({"id": "e", "instruction": "Number output.", "output": 42}), "field 'output' is not a string"),
    (json.dumps({"id": "f", "instruction": ["list"], "output": "x"}), "field 'instruction' is not a string"),
    (json.dumps({"id": "g", "instruction": "Blank answer.", "output": "  \n\t "}), "empty response"),
    (json.dumps({"id": "h", "instruction": "   ", "output": "Answer."}), "empty instruction"),
    (json.dumps({**GOOD, "id": "a", "output": "Same id again."}), "duplicate id 'a'"),
    (json.dumps([1, 2]), "record is not a JSON object"),
    (json.dumps({"id": "chat2", "messages": [{"role": "user", "content": "Hi"}]}),
     "last message is not from the assistant"),
    (json.dumps({"id": "chat3", "messages": "nope"}), "field 'messages' is not"),
]


def write_lines(path, lines):
    with open(path, "wb") as f:
        for line, _ in lines:
            f.write(line if isinstance(line, bytes) else line.encode())
            f.write(b"\n\n" if line is LINES[1][0] else b"\n")  # a blank line is not a record
    return path


def test_normalise_alpaca_and_chat():
    fields = PoolConfig()
    out = normalise({"instruction": "Q", "input": "ctx", "output": "A"}, fields)
    assert out == {"prompt": [{"role": "user", "content": "Q\nctx"}], "input": "ctx", "response": "A"}
    assert instruction_and_input(out["prompt"], out["input"]) == ("Q", "ctx")
    plain = normalise({"instruction": "Q\nctx", "input": "  ", "output": "A"}, fields)
    assert plain["input"] is None and instruction_and_input(plain["prompt"], plain["input"]) == ("Q\nctx", "")
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
            {"role": "assistant", "content": "A2"}]
    out = normalise({"messages": chat, "id": 7}, fields)
    assert out["prompt"] == chat[:-1] and out["response"] == "A2" and out["id"] == "7" and out["input"] is None
    assert instruction_and_input(out["prompt"], None) == ("U1\nA1\nU2", "")


def test_ingest_every_bad_kind_reconciles(ray_session, tmp_path):
    path = write_lines(tmp_path / "pool.jsonl", LINES)
    counts = ingest(PoolConfig(path=str(path)), tmp_path / "rows.parquet")
    rows = read_rows(tmp_path / "rows.parquet")
    assert rows.num_rows == len(LINES) == counts["records"]
    assert rows.schema.names == ["id", "status", "reason", "source", "source_row", "prompt", "input", "response",
                                 "raw"]
    assert len(set(rows["id"].to_pylist())) == rows.num_rows, "ids must be unique"
    by_position = sorted(rows.to_pylist(), key=lambda r: r["source_row"])
    for (_, expected), row in zip(LINES, by_position, strict=True):
        if expected is None:
            assert row["status"] == "valid" and row["reason"] is None, row
        else:
            assert row["status"] == "invalid" and row["reason"].startswith(expected), (expected, row)
            assert row["prompt"] is None and row["response"] is None
    valid = [r for r in by_position if r["status"] == "valid"]
    assert counts["valid"] == len(valid) == 4
    assert counts["invalid"] == len(LINES) - 4 == sum(counts["invalid_by_reason"].values())
    assert counts["invalid_by_reason"]["duplicate id"] == 1
    assert valid[1]["prompt"] == [{"role": "user", "content": "Name a colour.\nWarm one."}]
    assert valid[2]["id"].startswith("h")  # content hash for a row without id
    assert json.loads(valid[0]["raw"]) == {**GOOD, "id": "a"}  # the input's own fields, untouched
    dup = next(r for r in by_position if r["reason"] and r["reason"].startswith("duplicate"))
    assert dup["id"] == "a#1"


def test_a_bom_and_crlf_line_ends_are_read_as_plain_json_lines(tmp_path):
    from raysel.pool import _read_json, _read_jsonl

    records = [{"id": str(i), "instruction": "Q", "output": f"A{i}"} for i in range(3)]
    text = "\r\n".join(json.dumps(r) for r in records) + "\r\n"
    (tmp_path / "p.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "p.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(records).encode())
    for reader, name in ((_read_jsonl, "p.jsonl"), (_read_json, "p.json")):
        rows = list(reader(str(tmp_path / name), PoolConfig()))
        assert [r["status"] for r in rows] == ["valid"] * 3, rows
        assert [r["response"] for r in rows] == ["A0", "A1", "A2"]
        assert not any(r["raw"].endswith("\r") for r in rows)


def test_first_valid_occurrence_keeps_a_repeated_id(ray_session, tmp_path):
    lines = [(json.dumps({"id": "x", "instruction": "Q", "output": ""}), "empty response"),
             (json.dumps({"id": "x", "instruction": "Q", "output": "A"}), None)]
    ingest(PoolConfig(path=str(write_lines(tmp_path / "p.jsonl", lines))), tmp_path / "rows.parquet")
    rows = sorted(read_rows(tmp_path / "rows.parquet").to_pylist(), key=lambda r: r["source_row"])
    assert rows[1]["id"] == "x" and rows[1]["status"] == "valid"
    assert rows[0]["id"] == "x#1" and rows[0]["reason"] == "empty response"


def test_formats_directory_glob_and_saved_hf_dataset(ray_session, tmp_path):
    import datasets

    records = [{"id": f"r{i}", "instruction": f"Question {i}", "input": "", "output": f"Answer {i}",
                "domain": "math"} for i in range(6)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_text(json.dumps(records[:2]))
    pq.write_table(pa.Table.from_pylist(records[2:4]), src / "b.parquet")
    (src / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records[4:]) + "\n")
    (src / "_SUCCESS").write_text("")
    hf = tmp_path / "hf"
    datasets.Dataset.from_list(records).save_to_disk(str(hf))

    cases = [(src, range(6)), (src / "*.json*", [0, 1, 4, 5]), (hf, range(6)), (src / "b.parquet", [2, 3])]
    for i, (path, expected) in enumerate(cases):
        out = tmp_path / f"rows-{i}.parquet"
        counts = ingest(PoolConfig(path=str(path)), out)
        rows = read_rows(out)
        assert counts["records"] == counts["valid"] == rows.num_rows == len(expected), path
        assert sorted(rows["id"].to_pylist()) == [f"r{j}" for j in expected]
        assert json.loads(rows["raw"][0].as_py())["domain"] == "math"  # other columns carried in raw


def test_limit(ray_session, tmp_path):
    lines = [(json.dumps({"instruction": f"Q{i}", "output": f"A{i}"}), None) for i in range(20)]
    counts = ingest(PoolConfig(path=str(write_lines(tmp_path / "p.jsonl", lines)), limit=5), tmp_path / "r.parquet")
    assert counts["records"] == read_rows(tmp_path / "r.parquet").num_rows == 5
    assert (counts["limit"], counts["records_present"]) == (5, 20)  # the cut is said, with what was there
    whole = ingest(PoolConfig(path=str(tmp_path / "p.jsonl"), limit=50), tmp_path / "w.parquet")
    assert whole["records"] == 20 and "limit" not in whole  # a limit that cuts nothing is not reported


def test_whole_input_errors(ray_session, tmp_path):
    with pytest.raises(PoolError, match="does not exist"):
        list_input_files(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(PoolError, match="no jsonl/json/parquet files"):
        list_input_files(str(tmp_path))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(PoolError, match="no records found"):
        ingest(PoolConfig(path=str(tmp_path / "empty.jsonl")), tmp_path / "rows.parquet")
    assert not (tmp_path / "rows.parquet").exists()
    (tmp_path / "bad.parquet").write_text("not parquet at all")
    with pytest.raises(PoolError, match="cannot read"):
        ingest(PoolConfig(path=str(tmp_path / "bad.parquet")), tmp_path / "rows.parquet")
