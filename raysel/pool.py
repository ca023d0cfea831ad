"""Pool ingestion on Ray Data: read, normalise, validate, and account for every record.

    raysel ingest --pool data/*.jsonl --run-dir runs/x     ->  runs/x/rows.parquet

Inputs: JSONL, JSON (an array, or lines), Parquet, or a Hugging Face dataset saved with
`save_to_disk`; a file, a directory, or a glob; local or any pyarrow filesystem (s3://, gs://).
One Ray task reads each file (so a malformed line is a row with a reason, never a crash).

Every input record becomes exactly one row of rows.parquet (schema in ROW_SCHEMA) with
status "valid" or "invalid" and a reason. Blank lines of JSONL are not records.
Ids: the input's own `id` when present, else a content hash; ids are unique in rows.parquet,
so a repeated id (or repeated content, for rows without ids) is invalid, renamed `<id>#<n>`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from raysel.config import PoolConfig, UserError

log = logging.getLogger(__name__)

TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("source", pa.string()), ("source_row", pa.int64()),
    ("prompt", pa.list_(TURN)), ("input", pa.string()), ("response", pa.string()), ("raw", pa.string()),
])
FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "hf"}
READ_CHUNK = 4096  # records per batch a reading task yields


class PoolError(UserError):
    """A problem with the input as a whole: nothing is written."""


# --- one record -> one row (pure) --------------------------------------------------------

def normalise(record, fields: PoolConfig) -> dict:
    """Map an Alpaca or chat record to {id?, prompt, input, response}, or {reason} when it is bad.

    `prompt` is the conversation a model sees: an Alpaca `input` is joined to the instruction
    in its user turn (IterIT scores and trains on that). `input` keeps it apart too, for methods
    that render the fields themselves (DaaR's "Instruction/Input/Output", `instruction_and_input`)."""
    if not isinstance(record, dict):
        return {"reason": "record is not a JSON object"}
    messages = record.get(fields.messages_field)
    turns = _chat_turns(messages) if messages is not None else _alpaca_turns(record, fields)
    if isinstance(turns, str):
        return {"reason": turns}
    prompt, extra, response = turns
    if not any(t["role"] == "user" and t["content"].strip() for t in prompt):
        return {"reason": "empty instruction"}
    if not response.strip():
        return {"reason": "empty response"}
    out = {"prompt": prompt, "input": extra, "response": response}
    rid = record.get(fields.id_field)
    if rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
            return {"reason": f"field '{fields.id_field}' is not a non-empty string or integer"}
        out["id"] = str(rid)
    return out


def _alpaca_turns(record: dict, f: PoolConfig):
    for name in (f.instruction_field, f.output_field):
        if name not in record or record[name] is None:
            return f"missing field '{name}'"
        if not isinstance(record[name], str):
            return f"field '{name}' is not a string"
    extra = record.get(f.input_field)
    if extra is not None and not isinstance(extra, str):
        return f"field '{f.input_field}' is not a string"
    question = record[f.instruction_field]
    if not (extra and extra.strip() and question.strip()):
        return [{"role": "user", "content": question}], None, record[f.output_field]
    return [{"role": "user", "content": f"{question}\n{extra}"}], extra, record[f.output_field]


def _chat_turns(messages):
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages)
    if not ok:
        return "field 'messages' is not a non-empty list of {role, content} strings"
    if messages[-1]["role"] != "assistant":
        return "last message is not from the assistant"
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if not body or any(r not in ("user", "assistant") for r in body) or body[0] != "user" or any(
            a == b for a, b in zip(body, body[1:], strict=False)):
        return ("messages are not an optional system turn, then user and assistant turns in turn "
                f"(roles: {', '.join(roles[:8])}{', ...' if len(roles) > 8 else ''})")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    return turns[:-1], None, turns[-1]["content"]


def instruction_and_input(prompt: list[dict], extra: str | None) -> tuple[str, str]:
    """(instruction, input) of a normalised row: the inverse of the join in `_alpaca_turns`. A chat
    prompt's instruction is its non-system turns, one per line."""
    text = "\n".join(t["content"] for t in prompt if t["role"] != "system")
    if extra and text.endswith("\n" + extra):
        return text[: -len(extra) - 1], extra
    return text, ""


def content_id(prompt: list[dict], response: str) -> str:
    text = json.dumps([prompt, response], ensure_ascii=False, sort_keys=True)
    return "h" + hashlib.sha1(text.encode()).hexdigest()[:16]


def to_row(source: str, position: int, raw: str, record=None, error: str | None = None,
           fields: PoolConfig | None = None) -> dict:
    """One row of ROW_SCHEMA for the record at `source`, `position`."""
    norm = {"reason": error} if error else normalise(record, fields)
    if "reason" in norm:
        rid = record.get(fields.id_field) if isinstance(record, dict) and fields else None
        rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) else None
        return {"id": rid or _position_id(source, position), "status": "invalid", "reason": norm["reason"],
                "source": source, "source_row": position, "prompt": None, "input": None, "response": None,
                "raw": raw}
    return {"id": norm.get("id") or content_id(norm["prompt"], norm["response"]), "status": "valid",
            "reason": None, "source": source, "source_row": position, "prompt": norm["prompt"],
            "input": norm["input"],
            "response": norm["response"], "raw": raw}


def _position_id(source: str, position: int) -> str:
    return "x" + hashlib.sha1(f"{source}:{position}".encode()).hexdigest()[:16]


# --- reading files (one Ray task per file) -----------------------------------------------

def read_file_rows(batch: dict, fields: PoolConfig) -> Iterator[dict]:
    """Ray Data UDF: a batch of one file path in, batches of rows (column lists) out."""
    for path, fmt in zip(batch["path"], batch["format"], strict=True):
        rows = []
        for row in _checked(_READERS[fmt], str(path), fmt, fields):
            rows.append(row)
            if len(rows) == READ_CHUNK:
                yield _columns(rows)
                rows = []
        if rows:
            yield _columns(rows)


def _checked(reader, path: str, fmt: str, fields: PoolConfig) -> Iterator[dict]:
    """A file that cannot be read as its format at all is a whole-input error, not a bad row."""
    try:
        yield from reader(path, fields)
    except (OSError, pa.ArrowException, json.JSONDecodeError) as e:
        raise PoolError(f"cannot read {path} as {fmt}: {e}") from None


def _columns(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)


def _open(path: str):
    fs, inner = _filesystem(path)
    return fs.open_input_stream(inner)


BOM = b"\xef\xbb\xbf"


def _read_jsonl(path: str, fields: PoolConfig) -> Iterator[dict]:
    with _open(path) as f:
        data = f.read().removeprefix(BOM)  # editors on Windows write one; JSON does not allow it
    position = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        yield _parse_line(path, position, line.removesuffix(b"\r"), fields)  # CRLF line ends
        position += 1


def _parse_line(path: str, position: int, line: bytes, fields: PoolConfig) -> dict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return to_row(path, position, line.decode("utf-8", "replace"),
                      error=f"undecodable bytes (not UTF-8) at byte {e.start}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return to_row(path, position, text, error=f"malformed JSON: {e.msg} at column {e.colno}")
    return to_row(path, position, text, record, fields=fields)


def _read_json(path: str, fields: PoolConfig) -> Iterator[dict]:
    """A JSON array of records; a file that is not one is read as JSON lines."""
    with _open(path) as f:
        data = f.read()
    try:
        records = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        records = None
    if not isinstance(records, list):
        yield from _read_jsonl(path, fields)
        return
    for position, record in enumerate(records):
        yield to_row(path, position, json.dumps(record, ensure_ascii=False), record, fields=fields)


def _read_table_batches(path: str, fields: PoolConfig, batches) -> Iterator[dict]:
    position = 0
    for batch in batches:
        for record in batch.to_pylist():
            yield to_row(path, position, json.dumps(record, ensure_ascii=False, default=str), record,
                         fields=fields)
            position += 1


def _read_parquet(path: str, fields: PoolConfig) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with _open(path) as f:
        table = pq.read_table(pa.BufferReader(f.read()))
    yield from _read_table_batches(path, fields, table.to_batches(READ_CHUNK))


def _read_hf_arrow(path: str, fields: PoolConfig) -> Iterator[dict]:
    """One .arrow file of a `save_to_disk` folder (Arrow IPC stream format)."""
    with _open(path) as f:
        reader = pa.ipc.open_stream(f)
        yield from _read_table_batches(path, fields, reader)


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet, "hf": _read_hf_arrow}


# --- resolving the input -----------------------------------------------------------------

def list_input_files(path: str, fmt: str = "auto") -> list[tuple[str, str]]:
    """(file, format) pairs for a file, a directory, a glob or a save_to_disk folder."""
    import pyarrow.fs as pafs

    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
        prefix = path[: path.index("://") + 3]
    else:
        fs, inner, prefix = pafs.LocalFileSystem(), str(Path(path).expanduser().resolve()), ""
    if any(c in inner for c in "*?["):
        parent = inner[: inner.rfind("/", 0, min(inner.find(c) for c in "*?[" if c in inner))]
        infos = _list(fs, parent, recursive="**" in inner)
        files = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner)]
    else:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise PoolError(f"pool path {path} does not exist")
        if info.type == pafs.FileType.File:
            files = [inner]
        elif _is_saved_hf_dataset(fs, inner):
            return [(prefix + f, "hf") for f in _hf_data_files(fs, inner)]
        else:
            files = [i.path for i in _list(fs, inner, recursive=True) if i.type == pafs.FileType.File]
    found = sorted((prefix + f, _format_of(f, fmt)) for f in files if _format_of(f, fmt))
    if not found:
        raise PoolError(f"no {fmt if fmt != 'auto' else 'jsonl/json/parquet'} files at {path}")
    return found


def _list(fs, base: str, recursive: bool):
    import pyarrow.fs as pafs

    return fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))


def _format_of(name: str, fmt: str) -> str | None:
    base = Path(name).name
    if base.startswith((".", "_")):  # hidden files and _SUCCESS markers
        return None
    if fmt != "auto":
        return fmt
    return FORMATS.get(Path(name).suffix.lower())


def _is_saved_hf_dataset(fs, folder: str) -> bool:
    import pyarrow.fs as pafs

    names = ("state.json", "dataset_dict.json")
    return any(fs.get_file_info(f"{folder}/{n}").type == pafs.FileType.File for n in names)


def _hf_data_files(fs, folder: str) -> list[str]:
    """The arrow files of a saved Dataset; of a DatasetDict, its 'train' split."""
    import pyarrow.fs as pafs

    if fs.get_file_info(f"{folder}/dataset_dict.json").type == pafs.FileType.File:
        with fs.open_input_stream(f"{folder}/dataset_dict.json") as f:
            splits = json.loads(f.read())["splits"]
        if "train" not in splits:
            raise PoolError(f"{folder} is a DatasetDict without a 'train' split (splits: {splits}); "
                            "point pool.path at one split's folder")
        folder = f"{folder}/train"
    with fs.open_input_stream(f"{folder}/state.json") as f:
        state = json.loads(f.read())
    return [f"{folder}/{d['filename']}" for d in state["_data_files"]]


# --- the stage ---------------------------------------------------------------------------

def ingest(fields: PoolConfig, out_path: str | Path) -> dict:
    """Read the pool with Ray Data, mark duplicate ids, write `out_path` (rows.parquet). Returns counts."""
    import ray

    from raysel.runs import atomic_output

    files = list_input_files(fields.path, fields.format)
    log.info("reading %d file(s) from %s", len(files), fields.path)
    listing = ray.data.from_items([{"path": p, "format": f} for p, f in files], override_num_blocks=len(files))
    ds = listing.map_batches(read_file_rows, fn_kwargs={"fields": fields}, batch_size=1, batch_format="numpy")
    if fields.limit:
        ds = ds.limit(fields.limit)
    try:
        ds = ds.materialize()
    except Exception as e:  # Ray wraps errors raised in tasks; surface ours as they are
        cause = _find_cause(e, PoolError)
        if cause:
            raise PoolError(*cause.args) from None
        raise
    keys = ds.select_columns(["id", "status", "reason", "source", "source_row"]).to_arrow_refs()
    keys = pa.concat_tables(ray.get(keys))
    if keys.num_rows == 0:
        raise PoolError(f"no records found in {fields.path}")
    renames = duplicate_renames(keys)
    if renames:
        ds = ds.map_batches(_apply_renames, fn_kwargs={"renames": ray.put(renames)}, batch_format="pyarrow")
    with atomic_output(out_path) as tmp:
        ds.write_parquet(str(Path(tmp).resolve()))
    counts = count_rows(keys, renames)
    if fields.limit and counts["records"] >= fields.limit:
        counts.update(limit=fields.limit, records_present=count_records(files))
        log.warning("pool.limit=%d: read the first %d records of %s, which holds %s", fields.limit,
                    counts["records"], fields.path, counts["records_present"] or "more (count unknown)")
    return counts


def count_records(files: list[tuple[str, str]]) -> int | None:
    """Records in the input where that is cheap to know (JSONL lines, Parquet metadata), else None."""
    import pyarrow.parquet as pq

    total = 0
    for path, fmt in files:
        if fmt == "parquet":
            fs, inner = _filesystem(path)
            total += pq.read_metadata(inner, filesystem=fs).num_rows  # the footer only
        elif fmt == "jsonl":
            with _open(path) as f:
                total += sum(1 for line in f.read().split(b"\n") if line.strip())
        else:
            return None
    return total


def _find_cause(error: BaseException, kind: type) -> BaseException | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind) and not isinstance(getattr(error, "cause", None), kind):
            return error
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def duplicate_renames(keys: pa.Table) -> dict[tuple[str, int], tuple[str, str]]:
    """(source, source_row) -> (new id, reason) for every repeat of an id.

    The first valid occurrence (in input order) keeps the id, so an invalid row never
    costs a valid one its place.
    """
    cols = (keys[c].to_pylist() for c in ("status", "source", "source_row", "id"))
    order = sorted((status != "valid", source, pos, rid) for status, source, pos, rid in zip(*cols, strict=True))
    keeper: dict[str, str] = {}
    seen: Counter = Counter()
    renames = {}
    for _, source, position, rid in order:
        seen[rid] += 1
        if rid not in keeper:
            keeper[rid] = f"{source}:{position}"
        else:
            renames[(source, position)] = (f"{rid}#{seen[rid] - 1}", f"duplicate id '{rid}' (kept at {keeper[rid]})")
    return renames


def _apply_renames(table: pa.Table, renames) -> pa.Table:
    import ray

    renames = ray.get(renames) if isinstance(renames, ray.ObjectRef) else renames
    hits = [(s, p) in renames for s, p in zip(table["source"].to_pylist(), table["source_row"].to_pylist(),
                                                strict=True)]
    if not any(hits):
        return table
    rows = table.to_pylist()
    for row in rows:
        hit = renames.get((row["source"], row["source_row"]))
        if hit:
            row["id"] = hit[0]
            if row["status"] == "valid":
                row.update(status="invalid", reason=hit[1], prompt=None, input=None, response=None)
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def count_rows(keys: pa.Table, renames: dict) -> dict:
    reasons = Counter()
    invalid = 0
    for src, pos, status, reason in zip(*(keys[c].to_pylist() for c in ("source", "source_row", "status", "reason")),
                                        strict=True):
        if (src, pos) in renames and status == "valid":
            status, reason = "invalid", "duplicate id"
        if status == "invalid":
            invalid += 1
            reasons[_reason_kind(reason)] += 1
    return {"records": keys.num_rows, "valid": keys.num_rows - invalid, "invalid": invalid,
            "invalid_by_reason": dict(sorted(reasons.items()))}


def _reason_kind(reason: str) -> str:
    """The reason without its details ('malformed JSON: ...' -> 'malformed JSON')."""
    return reason.split(":")[0].split(" (")[0].split(" at byte")[0]


def read_rows(path: str | Path, columns: list[str] | None = None, valid_only: bool = False) -> pa.Table:
    """rows.parquet (a folder of Parquet files) as one Arrow table, sorted by input position."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(path), format="parquet").to_table(columns=columns)
    if valid_only:
        table = table.filter(pa.compute.equal(table["status"], "valid"))
    if {"source", "source_row"} <= set(table.column_names):
        table = table.sort_by([("source", "ascending"), ("source_row", "ascending")])
    return table


def resolve_pool_path(fields: PoolConfig) -> PoolConfig:
    """Map the "demo" alias to the generated demo pool."""
    if fields.path != "demo":
        return fields
    import dataclasses

    from raysel.demo.pool import ensure_demo_pool

    return dataclasses.replace(fields, path=str(ensure_demo_pool()))
