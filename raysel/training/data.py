"""The round's training rows in Ray Data: selected valid rows of rows.parquet, placed on their
(worker, position) slots, tokenised with the chat template and answer span that scoring uses.

Everything is materialised before the trainer starts, one dataset per worker: the training
workers hold every CPU of a small cluster, so nothing may be left to compute once they run.
"""

from __future__ import annotations

import functools
import logging

from raysel.templates import render

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["id", "worker", "position", "input_ids", "answer_start", "answer_end"]


def worker_datasets(rows_path: str, slots: dict[str, list[tuple[int, int]]], num_workers: int,
                    model_path: str, max_length: int, trust_remote_code: bool = False) -> list:
    """One materialised Ray Dataset per training worker, with TRAIN_COLUMNS."""
    import ray

    expected = sum(len(s) for s in slots.values())
    slots_ref = ray.put(slots)
    tokenised = (
        ray.data.read_parquet(rows_path).select_columns(["id", "status", "prompt", "response"])
        .map_batches(_place_on_slots, fn_kwargs={"slots_ref": slots_ref}, batch_format="pyarrow")
        .map_batches(_tokenise, fn_kwargs={"model_path": model_path, "max_length": max_length,
                                           "trust_remote_code": trust_remote_code}, batch_format="pyarrow")
        .materialize()
    )
    if tokenised.count() != expected:  # check_selected passed: the file changed under us
        raise RuntimeError(f"{rows_path} changed while training: {tokenised.count()} rows placed, {expected} expected")
    return [tokenised.map_batches(_rows_of_worker, fn_kwargs={"worker": w}, batch_format="pyarrow").materialize()
            for w in range(num_workers)]


def _place_on_slots(batch, slots_ref):
    """Keep the valid selected rows, one copy per slot they train in."""
    import pyarrow as pa
    import pyarrow.compute as pc

    slots = _get(slots_ref)
    batch = batch.filter(pc.equal(batch["status"], "valid"))
    take, workers, positions = [], [], []
    for i, row_id in enumerate(batch["id"].to_pylist()):
        for worker, position in slots.get(row_id, ()):
            take.append(i)
            workers.append(worker)
            positions.append(position)
    placed = batch.select(["id", "prompt", "response"]).take(pa.array(take, pa.int64()))
    return placed.append_column("worker", pa.array(workers, pa.int32())).append_column(
        "position", pa.array(positions, pa.int64()))


def _tokenise(batch, model_path: str, max_length: int, trust_remote_code: bool):
    import pyarrow as pa

    tokenizer = _tokenizer(model_path, trust_remote_code)
    rendered = [render(tokenizer, prompt, response, max_length)
                for prompt, response in zip(batch["prompt"].to_pylist(), batch["response"].to_pylist(), strict=True)]
    return pa.table({
        "id": batch["id"],
        "worker": batch["worker"],
        "position": batch["position"],
        "input_ids": pa.array([r.input_ids for r in rendered], pa.list_(pa.int32())),
        "answer_start": pa.array([r.answer_start for r in rendered], pa.int32()),
        "answer_end": pa.array([r.answer_end for r in rendered], pa.int32()),
    })


def _rows_of_worker(batch, worker: int):
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch["worker"], worker))


@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str, trust_remote_code: bool):
    from raysel.models import load_tokenizer

    return load_tokenizer(model_path, trust_remote_code)


@functools.lru_cache(maxsize=2)
def _get(ref):
    """The slot table, fetched once per task process (ObjectRefs hash by their id)."""
    import ray

    return ray.get(ref)


def check_selected(rows_path: str, ids: list[str]) -> None:
    """Fail early, naming them, if some selected ids are not valid rows (reads two columns only)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    wanted = set(ids)
    table = pads.dataset(rows_path, format="parquet").to_table(
        columns=["id"], filter=(pc.field("status") == "valid") & pc.field("id").isin(list(wanted)))
    missing = sorted(wanted - set(table["id"].to_pylist()))
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(wanted)} selected ids are not valid rows of {rows_path} (absent, or "
            f"status != 'valid'), e.g. {missing[:5]}. Select only valid rows, or re-run the selection stage.")
