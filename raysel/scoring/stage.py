"""The scoring stage: Ray Data actors score the valid rows of rows.parquet with a model.

    summary = score_pool(run / "rows.parquet", run / "round-0", "demo", cfg)
    ids, vectors = read_embeddings(run / "round-0")

The rows reach the actors through the shared actor map (raysel.actor_map). Each actor loads
the model once (a base model or a round's checkpoint: full weights or a LoRA adapter on its
base) and scores a Ray batch of `scoring.batch_size` samples at a time with `BatchScorer`.
Outputs, each written atomically:

    scores.parquet       id, status ("scored" | "invalid"), reason, l_cond, l_prior, ifd,
                         n_answer_tokens, truncated; one row per scored sample, sorted by id.
                         Gathered and written by the driver: ids and scores, a few numbers a row.
    embeddings.parquet/  a folder: id, embedding (fixed_size_list<float16>[hidden]) of the scored
                         rows, one part per batch, written by the actor that scored it (the
                         vectors never pass through the driver); read_embeddings sorts them by id

Rows that ingestion marked invalid are not scored; the summary counts them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raysel.actor_map import gathered, map_valid_rows, plan_actors
from raysel.config import Config
from raysel.runs import EMBEDDINGS_FILE, SCORES_FILE, fresh_folder, write_parquet, write_part

log = logging.getLogger(__name__)


SCORES_SCHEMA = pa.schema([
    ("id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("l_cond", pa.float64()), ("l_prior", pa.float64()), ("ifd", pa.float64()),
    ("n_answer_tokens", pa.int32()), ("truncated", pa.bool_()),
])

# Forward micro-batch sizes, in padded tokens. On CPU a few thousand tokens amortise the
# per-op overhead of eager PyTorch; much more spills the activations out of cache (bf16 peaks
# near 4096, fp32, with slower matmuls, near 1024: `benchmarks/scoring.py --tokens-per-forward`
# measures it on a machine). On GPU bigger batches keep the device busy.
CPU_TOKENS_PER_FORWARD = {"bfloat16": 4096, "float32": 1024}
GPU_TOKENS_PER_FORWARD = 65536
# LM-head logits a vocabulary slice at a time. On CPU a [positions, 2048] slice stays in cache
# and beats the whole vocabulary at once (`benchmarks/scoring.py --vocab-chunk`); on GPU bigger
# slices keep the matmuls big and still bound the logits' memory.
VOCAB_CHUNK = {"cpu": 2048, "cuda": 16384}


def default_tokens_per_forward(device: str, dtype) -> int:
    if device == "cuda":
        return GPU_TOKENS_PER_FORWARD
    return CPU_TOKENS_PER_FORWARD.get(str(dtype).removeprefix("torch."), 4096)


def resolve_dtype(name: str, device: str):
    """The torch dtype for scoring. "auto": bf16 on CUDA; on CPU bf16 where it beats fp32 (AMX),
    fp32 elsewhere (`raysel.models.cpu_has_fast_bf16` has the measurements).

    Measured on a 2-core AMX Xeon, SmolLM2-135M, one thread (benchmarks/scoring.py): bf16 scored
    3.1x faster than fp32 (794 against 255 tokens/s). On 64 demo samples bf16 moved IFD by 0.0054
    on average and 0.016 at most (IFD spread 0.23; rank correlation with fp32 0.9987); the worst
    relative changes (up to 6%) are on answers of a few tokens. fp32 scoring matches the fp32
    reference to 1e-6. Set scoring.dtype=float32 for exact reference numbers."""
    import torch

    from raysel.models import cpu_has_fast_bf16

    if name == "float32":
        return torch.float32
    if name == "bfloat16" or device == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def load_for_inference(model_path: str, cfg: Config, threads: int, device: str):
    """(model on `device`, tokenizer, dtype) for an actor's pass over the pool: `threads` torch
    threads, the dtype of `resolve_dtype`, a LoRA adapter folded in (inference only)."""
    import torch

    from raysel.models import load_model, load_tokenizer

    torch.set_num_threads(threads)
    dtype = resolve_dtype(cfg.scoring.dtype, device)
    model = load_model(model_path, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    return model.to(device), tokenizer, dtype


# --- the actor --------------------------------------------------------------------------------

class Scorer:
    """What `map_batches` calls: rows (id, prompt, response) in, score rows (+ embedding) out."""

    def __init__(self, model_path: str, cfg: Config, threads: int, device: str, embeddings_dir: str | None = None):
        import ray

        from raysel.scoring.batch import BatchScorer

        self.embeddings_dir, self.node = embeddings_dir, ray.get_runtime_context().get_node_id()
        model, tokenizer, dtype = load_for_inference(model_path, cfg, threads, device)
        s = cfg.scoring
        budget = s.tokens_per_forward or default_tokens_per_forward(device, dtype)
        self.scorer = BatchScorer(model, tokenizer, max_length=cfg.model.max_length,
                                  prior_context=s.prior_context, embeddings=s.embeddings,
                                  embedding_layer=s.embedding_layer, token_budget=budget,
                                  lm_head_chunk=s.lm_head_chunk, vocab_chunk=s.vocab_chunk or VOCAB_CHUNK[device],
                                  share_prefix=s.share_prefix, embedding_span=s.embedding_span)
        self.dtype = str(dtype).removeprefix("torch.")
        fallback = self.scorer.prior_fallback
        self.prior = self.scorer.prior_context + (f" (fallback: {fallback})" if fallback else "")
        log.info("scorer ready: %s on %s, %s, %d threads", model_path, device, dtype, threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        table = score_table(self.scorer, batch)
        if self.embeddings_dir is not None:  # the vectors go to storage from here, not to the driver
            write_embedding_part(table, Path(self.embeddings_dir))
            table = table.drop_columns(["embedding"])
        table = table.append_column("scored_by", pa.array([os.getpid()] * table.num_rows, pa.int64()))
        table = table.append_column("scored_on", pa.array([self.node] * table.num_rows, pa.string()))
        table = table.append_column("prior_used", pa.array([self.prior] * table.num_rows, pa.string()))
        return table.append_column("scored_in", pa.array([self.dtype] * table.num_rows, pa.string()))


def score_table(scorer, rows: pa.Table) -> pa.Table:
    """Score rows with columns id, prompt, response: the score columns, plus `embedding`
    (fixed_size_list<float16>) when the scorer pools embeddings. Used in and out of Ray."""
    samples = list(zip(rows.column("prompt").to_pylist(), rows.column("response").to_pylist(), strict=True))
    results = scorer.score(samples)
    columns = {
        "id": rows.column("id"),
        "status": [r.status for r in results],
        "reason": [r.reason for r in results],
        "l_cond": [r.l_cond for r in results],
        "l_prior": [r.l_prior for r in results],
        "ifd": [r.ifd for r in results],
        "n_answer_tokens": [r.n_answer_tokens for r in results],
        "truncated": [r.truncated for r in results],
    }
    table = pa.table(columns, schema=SCORES_SCHEMA)
    if scorer.embeddings:
        table = table.append_column("embedding", _embedding_column(results, scorer.hidden_size))
    return table


def write_embedding_part(table: pa.Table, folder: Path) -> None:
    """The scored rows' embeddings of one batch as a part of the folder embeddings.parquet."""
    import pyarrow.compute as pc

    scored = table.filter(pc.equal(table["status"], "scored")).select(["id", "embedding"])
    if scored.num_rows:
        write_part(scored, folder)


def _embedding_column(results, width: int) -> pa.FixedSizeListArray:
    """float16 vectors; zeros for invalid samples (they are dropped before writing). Values are
    clipped to float16's range: a few hidden-state dimensions of big models can be huge."""
    fp16_max = float(np.finfo(np.float16).max)
    matrix = np.zeros((len(results), width), dtype=np.float16)
    for i, r in enumerate(results):
        if r.embedding is not None:
            matrix[i] = np.clip(r.embedding.numpy(), -fp16_max, fp16_max)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), width)


# --- the stage --------------------------------------------------------------------------------

def score_pool(rows_path: str | Path, out_dir: str | Path, model_path: str, cfg: Config,
               ids: list[str] | None = None) -> dict:
    """Score the valid rows of rows.parquet (or only `ids`) into out_dir; returns the counts."""
    import ray

    rows_path, out_dir = Path(rows_path).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_actors(cfg.scoring, ray.cluster_resources())
    ctor = {"model_path": str(model_path), "cfg": cfg, "threads": plan.threads, "device": plan.device,
            "embeddings_dir": fresh_folder(out_dir / EMBEDDINGS_FILE) if cfg.scoring.embeddings else None}
    scored, counts = map_valid_rows(rows_path, Scorer, ctor, plan, ["id", "prompt", "response"], ids=ids,
                                    batch_size=cfg.scoring.batch_size)
    log.info("scoring %d rows with %s: %s", counts["to_score"], model_path, plan)
    scores, workers, nodes, dtypes, priors = _collect(scored, counts["to_score"])
    write_parquet(scores, out_dir / SCORES_FILE)  # ids and scores only: the embeddings are written by the actors
    status = scores.column("status").to_pylist()
    truncated = scores.column("truncated").to_pylist()
    return {**counts, "scored": status.count("scored"), "invalid": status.count("invalid"),
            "truncated": sum(truncated), "actors": plan.num_actors, "actors_used": workers, "nodes_used": nodes,
            "threads_per_actor": plan.threads, "device": plan.device,
            "dtype": ",".join(sorted(dtypes)) or None, "prior_context": "; ".join(sorted(priors)) or None}


def _collect(scored, total: int) -> tuple[pa.Table, int, list[str], set[str], set[str]]:
    """Stream the score columns into the driver (ids and scores: a few numbers a row); how many
    actors did work, the Ray nodes they ran on, the dtypes they scored in and the priors they used."""
    import pyarrow.compute as pc

    score_parts = [SCORES_SCHEMA.empty_table()]
    workers, nodes, dtypes, priors = set(), set(), set(), set()
    for batch in gathered(scored, total, "scoring"):
        score_parts.append(batch.select(SCORES_SCHEMA.names))
        workers.update(pc.unique(batch["scored_by"]).to_pylist())
        nodes.update(pc.unique(batch["scored_on"]).to_pylist())
        dtypes.update(pc.unique(batch["scored_in"]).to_pylist())
        priors.update(pc.unique(batch["prior_used"]).to_pylist())
    return pa.concat_tables(score_parts).sort_by("id"), len(workers), sorted(nodes), dtypes, priors


# --- reading the outputs ------------------------------------------------------------------------

def read_scores(round_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(Path(round_dir) / SCORES_FILE, columns=columns)


def read_embeddings(round_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids as a str array, float16 matrix [n, hidden]) of the round's scored samples, sorted by id.
    embeddings.parquet is a folder of parts (one per scored batch), or one file in older runs."""
    import pyarrow.parquet as pq

    path = Path(round_dir) / EMBEDDINGS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: score the round with scoring.embeddings=true")
    parts = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not parts:  # nothing was scored
        return np.array([], dtype=str), np.zeros((0, 0), dtype=np.float16)
    table = pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("id")
    column = table.column("embedding").combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, column.type.list_size)
    return np.asarray(table.column("id").to_pylist(), dtype=str), vectors
