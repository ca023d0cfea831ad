"""Held-out evaluation: does the tuned model do better than the base model?

    raysel eval --run-dir runs/x                      # the run's last checkpoint on eval.heldout
    raysel eval --run-dir runs/x --model demo         # the base model, for comparison

For a model and one or more held-out sets (JSONL in the pool's formats, each row with its
`domain`, else the file's name), per domain: the mean answer-token loss (token-weighted, the
same rendering and answer span as training and scoring) and, for domains with a checkable
answer (`eval.accuracy_domains`, default arithmetic), the exact-match accuracy of greedy
generation: the final number of the generated answer against the final number of the
reference. Rows run on the shared Ray Data actor map. Writes eval.parquet (one row per
held-out row) and eval.json (per domain and overall) into the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pyarrow as pa

from raysel.config import Config, UserError

log = logging.getLogger(__name__)

EVAL_SCHEMA = pa.schema([
    ("id", pa.string()), ("domain", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("loss", pa.float64()), ("n_answer_tokens", pa.int32()), ("generated", pa.string()), ("correct", pa.bool_()),
])

# A number as people write it in an answer: 1,260 or 1260 or -3.5 (a thousands comma only
# between digit groups, so "3, 4" stays two numbers).
GENERATE_BATCH = 16  # prompts per greedy generate call
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


# --- answers (pure) ----------------------------------------------------------------------------

def final_number(text: str | None) -> Decimal | None:
    """The last number in a text ("So the discount is $22." -> 22), or None."""
    found = _NUMBER.findall(text or "")
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None


def answers_match(generated: str | None, reference: str) -> bool:
    """Exact match of the final numbers (1260 == 1,260.0); False when either has none."""
    a, b = final_number(generated), final_number(reference)
    return a is not None and b is not None and a == b


# --- held-out sets -----------------------------------------------------------------------------

def heldout_files(paths: list[str]) -> list[Path]:
    """The JSONL files of eval.heldout: files, folders of *.jsonl, or "demo" (the demo pool's)."""
    files = []
    for p in paths:
        if p == "demo":
            from raysel.demo.pool import ensure_demo_pool

            p = str(ensure_demo_pool().parent / "heldout")
        path = Path(p)
        if path.is_dir():
            files += sorted(path.glob("*.jsonl"))
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"eval.heldout: {p} does not exist")
    if not files:
        raise UserError(f"eval.heldout: no .jsonl files in {paths}")
    return files


def heldout_rows(paths: list[str]) -> pa.Table:
    """Every held-out record normalised like a pool row (id, status, reason, prompt, input,
    response) plus its domain; a record that cannot be normalised is an invalid row."""
    from raysel.config import PoolConfig
    from raysel.pool import ROW_SCHEMA, normalise

    rows = []
    for path in heldout_files(paths):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            norm = normalise(record, PoolConfig(id_field="")) if record is not None else {"reason": "malformed JSON"}
            domain = record.get("domain") if isinstance(record, dict) else None
            rows.append({"id": f"{path.stem}:{n}", "domain": str(domain or path.stem),
                         "status": "invalid" if "reason" in norm else "valid", "reason": norm.get("reason"),
                         "prompt": norm.get("prompt"), "input": norm.get("input"), "response": norm.get("response")})
    fields = [pa.field("id", pa.string()), pa.field("domain", pa.string()), pa.field("status", pa.string()),
              pa.field("reason", pa.string()), ROW_SCHEMA.field("prompt"), ROW_SCHEMA.field("input"),
              ROW_SCHEMA.field("response")]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


# --- the actor ---------------------------------------------------------------------------------

class Evaluator:
    """What `map_batches` calls: held-out rows in, their answer loss (and greedy answer) out."""

    def __init__(self, model_path: str, cfg: Config, threads: int, device: str):
        from raysel.scoring.batch import BatchScorer
        from raysel.scoring.stage import default_tokens_per_forward, load_for_inference

        self.model, self.tokenizer, dtype = load_for_inference(model_path, cfg, threads, device)
        self.scorer = BatchScorer(self.model, self.tokenizer, max_length=cfg.model.max_length, embeddings=False,
                                  token_budget=default_tokens_per_forward(device, dtype), conditional_only=True)
        self.accuracy_domains = set(cfg.eval.accuracy_domains)
        self.max_new_tokens, self.device = cfg.eval.max_new_tokens, device

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts, responses = batch["prompt"].to_pylist(), batch["response"].to_pylist()
        results = self.scorer.score(list(zip(prompts, responses, strict=True)))
        check = [d in self.accuracy_domains for d in batch["domain"].to_pylist()]
        answers = iter(self.generate([p for p, c in zip(prompts, check, strict=True) if c]))
        generated = [next(answers) if c else None for c in check]
        return pa.table({
            "id": batch["id"], "domain": batch["domain"],
            "status": [r.status for r in results], "reason": [r.reason for r in results],
            "loss": [r.l_cond for r in results], "n_answer_tokens": [r.n_answer_tokens for r in results],
            "generated": generated,
            "correct": [answers_match(g, ref) if c else None
                        for g, ref, c in zip(generated, responses, check, strict=True)],
            "evaluated_by": [os.getpid()] * batch.num_rows,
        })

    def generate(self, prompts: list[list[dict]], batch: int = GENERATE_BATCH) -> list[str]:
        """Greedy answers, rendered with the chat template as in training; left-padded batches
        (the prompts end where generation starts)."""
        import torch

        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        self.tokenizer.padding_side = "left"
        out = []
        for start in range(0, len(texts), batch):
            enc = self.tokenizer(texts[start:start + batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id)
            out += self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out


# --- the stage ---------------------------------------------------------------------------------

def evaluate(model_path: str, cfg: Config, out_dir: str | Path) -> dict:
    """Evaluate `model_path` on cfg.eval.heldout into out_dir/eval.parquet and eval.json."""
    from raysel.actor_map import map_to_table
    from raysel.runs import atomic_output, write_parquet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = heldout_rows(cfg.eval.heldout)
    inputs = out_dir / ".eval-input.parquet"
    write_parquet(rows, inputs)
    try:
        table, _, _ = map_to_table(inputs, Evaluator, {"model_path": str(model_path)}, cfg,
                                   ["id", "domain", "prompt", "input", "response"], desc="eval")
    finally:
        inputs.unlink(missing_ok=True)
    done = table.select(EVAL_SCHEMA.names).cast(EVAL_SCHEMA) if table is not None else EVAL_SCHEMA.empty_table()
    table = _with_invalid(rows, done).sort_by("id")
    write_parquet(table, out_dir / "eval.parquet")
    summary = {"model": str(model_path), "heldout": cfg.eval.heldout, **summarise(table)}
    with atomic_output(out_dir / "eval.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def _with_invalid(rows: pa.Table, done: pa.Table) -> pa.Table:
    """Every held-out row: the evaluated ones, and the invalid ones with their reason."""
    import pyarrow.compute as pc

    invalid = rows.filter(pc.equal(rows["status"], "invalid"))
    n = invalid.num_rows
    extra = pa.table({"id": invalid["id"], "domain": invalid["domain"], "status": invalid["status"],
                      "reason": invalid["reason"], "loss": pa.nulls(n, pa.float64()),
                      "n_answer_tokens": pa.nulls(n, pa.int32()), "generated": pa.nulls(n, pa.string()),
                      "correct": pa.nulls(n, pa.bool_())}, schema=EVAL_SCHEMA)
    return pa.concat_tables([done, extra])


def summarise(table: pa.Table) -> dict:
    """Per domain and overall: rows, token-weighted mean answer loss, accuracy where checked."""
    rows = table.to_pylist()
    out = {"by_domain": {}}
    for domain in sorted({r["domain"] for r in rows}):
        out["by_domain"][domain] = _stats([r for r in rows if r["domain"] == domain])
    losses = [v["loss"] for v in out["by_domain"].values() if v["loss"] is not None]
    out["mean_loss"] = float(np.mean(losses)) if losses else None  # mean over domains: each counts once
    out["overall"] = _stats(rows)
    return out


def _stats(rows: list[dict]) -> dict:
    scored = [r for r in rows if r["status"] == "scored" and r["loss"] is not None]
    tokens = sum(r["n_answer_tokens"] for r in scored)
    checked = [r for r in scored if r["correct"] is not None]
    return {"rows": len(rows), "scored": len(scored), "answer_tokens": tokens,
            "loss": sum(r["loss"] * r["n_answer_tokens"] for r in scored) / tokens if tokens else None,
            "accuracy": sum(r["correct"] for r in checked) / len(checked) if checked else None,
            "checked": len(checked)}
