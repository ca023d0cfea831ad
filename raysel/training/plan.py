"""The pure arithmetic of training: step counts, the LR schedule, who trains on what, batches.

No Ray, no DeepSpeed: everything here is plain Python, NumPy and torch, and testable alone.

The order of training is fixed up front by `assign_slots`, from the run seed and the round:
every (epoch, step, micro-batch, worker, position) is decided on the driver from the sorted
selected ids, so a round re-run from the previous round's checkpoint sees exactly the same
batches on the same workers, whatever order Ray Data delivers the rows in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, padding)


@dataclass(frozen=True)
class BatchShape:
    batch_size: int  # rows per worker per micro-batch
    num_workers: int
    grad_accum: int  # micro-batches per optimizer step

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.num_workers * self.grad_accum


def batch_shape(training_cfg) -> BatchShape:
    return BatchShape(training_cfg.batch_size, training_cfg.num_workers, training_cfg.gradient_accumulation)


def steps_per_round(n_rows: int, training_cfg) -> int:
    """Optimizer steps to train `epochs` passes over `n_rows` (the last step of a pass is topped
    up with rows from the start of that pass, so no row is dropped)."""
    per_epoch = math.ceil(n_rows / batch_shape(training_cfg).rows_per_step)
    return training_cfg.epochs * per_epoch


def total_steps(k: int, rounds: int, training_cfg) -> int:
    """Optimizer steps of a whole run: the single LR schedule spans all rounds."""
    return rounds * steps_per_round(k, training_cfg)


def warmup_steps(total: int, warmup_ratio: float) -> int:
    return math.ceil(total * warmup_ratio)


class WarmupCosine:
    """LR factor at optimizer step `step` (0-based): linear warm-up from 0, then cosine to 0
    at `total` (the formula of transformers' get_cosine_schedule_with_warmup). A callable
    object, not a closure, so LambdaLR can put it into its state_dict."""

    def __init__(self, total: int, warmup: int):
        self.total = total
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def assign_slots(ids: list[str], shape: BatchShape, epochs: int, seed: int,
                 round_idx: int) -> dict[str, list[tuple[int, int]]]:
    """Where each row is trained: id -> [(worker, position in that worker's sequence), ...].

    Each epoch is a seeded permutation of the sorted ids, topped up to whole optimizer steps by
    repeating its first rows. A global step takes `rows_per_step` consecutive rows: micro-batch
    m of the step, worker w, slot j. Worker w's sequence is its micro-batches back to back, so
    its micro-batch i is positions [i * batch_size, (i + 1) * batch_size).
    """
    ordered = sorted(ids)
    n, per_step = len(ordered), shape.rows_per_step
    steps = math.ceil(n / per_step)
    per_worker_step = shape.grad_accum * shape.batch_size
    slots: dict[str, list[tuple[int, int]]] = {i: [] for i in ordered}
    for epoch in range(epochs):
        order = np.random.default_rng([seed, round_idx, epoch]).permutation(n)
        padded = np.resize(order, steps * per_step)  # repeats the start of the permutation
        for p, row in enumerate(padded.tolist()):
            step, q = divmod(p, per_step)
            micro, q = divmod(q, shape.batch_size * shape.num_workers)
            worker, j = divmod(q, shape.batch_size)
            position = (epoch * steps + step) * per_worker_step + micro * shape.batch_size + j
            slots[ordered[row]].append((worker, position))
    return slots


def collate(rows: list[tuple[np.ndarray, int, int]], pad_id: int) -> dict:
    """Pad right; labels are the tokens inside the answer span [start, end), IGNORE_INDEX elsewhere."""
    import torch

    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, start, end) in enumerate(rows):
        ids = torch.tensor(np.asarray(ids), dtype=torch.long)
        input_ids[r, : len(ids)] = ids
        attention_mask[r, : len(ids)] = 1
        labels[r, start:end] = ids[start:end]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def answer_loss(logits, labels):
    """Mean next-token NLL over answer tokens; 0 (with zero gradient) when a batch has none.

    Only the answer positions are upcast to fp32 (full-vocabulary logits of every position are big)."""
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
    return nll / keep.sum().clamp(min=1)
