"""Each stage once, behind its completion marker: the pieces the loops put in order.

A stage whose marker exists is skipped on --resume; its outputs were renamed into place
before the marker was written, so they are complete.
"""

from __future__ import annotations

import logging
import os

from raysel.config import Config
from raysel.runs import RunDir, atomic_output, timed

log = logging.getLogger(__name__)

RESCORE_POOL_FILE = "rescore_pool.txt"  # rolling: the ids the next round re-scores, best first


def open_run(cfg: Config, job: str, resume: bool = False, reuse: bool = False) -> RunDir:
    return RunDir.create(cfg, job, resume=resume, reuse=reuse)


def start_ray(cfg: Config):
    """Join the cluster this job was submitted to (or cfg.ray.address), else start a local one."""
    import ray

    if ray.is_initialized():
        return ray
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # A local cluster gets the dashboard: Ray Train's placement-group cleaner asks the State API
    # (served by the dashboard) whether the controller lives, and warns every second without it.
    kwargs = {} if address else {"num_cpus": cfg.ray.num_cpus, "include_dashboard": True}
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, **kwargs)
    log.info("ray cluster: %s", {k: v for k, v in ray.cluster_resources().items() if "node" not in k})
    return ray


def ingest_stage(run: RunDir, cfg: Config, force: bool = False) -> dict:
    """rows.parquet: every input record with a status. Returns the counts."""
    from raysel.pool import ingest, resolve_pool_path

    if run.is_done("ingest") and not force:
        return run.stats("ingest")
    run.forget("ingest")
    with timed() as t:
        fields = resolve_pool_path(cfg.pool)
        counts = ingest(fields, run.path / "rows.parquet")
    run.mark_done("ingest", t(), counts)
    run.update_manifest(counts=counts)
    cut = f" (cut by pool.limit from {counts.get('records_present') or 'more'})" if "limit" in counts else ""
    log.info("ingested %d records%s: %d valid, %d invalid %s", counts["records"], cut, counts["valid"],
             counts["invalid"], counts["invalid_by_reason"])
    return counts


def score_stage(run: RunDir, cfg: Config, r: int, model: str, ids: list[str] | None = None) -> dict:
    """round-R/scores.parquet (+ embeddings) for the valid rows, or only `ids` (a re-score pool)."""
    from raysel.scoring import score_pool

    stage = f"score-{r}"
    if run.is_done(stage):
        return run.stats(stage)
    with timed() as t:
        summary = score_pool(run.path / "rows.parquet", run.round_dir(r), model, cfg, ids=ids)
    run.mark_done(stage, t(), {"model": str(model), **summary})
    return run.stats(stage)


def select_stage(run: RunDir, cfg: Config, r: int, k: int, n_rank: int,
                 candidate_ids: list[str] | None = None, scores_round: int | None = None) -> dict:
    """round-R/selection.parquet and selected.jsonl, on round `scores_round`'s scores (default r).
    Returns the ranked and the selected ids, and the next round's re-score pool
    (round-R/rescore_pool.txt when it is not the ranking's top)."""
    from raysel.selection.stage import rank_pool, ranked_ids, select_round

    stage = f"select-{r}"
    out = run.round_dir(r)
    scores_path = _scores_path(run, cfg, r if scores_round is None else scores_round)
    # Rolling: the next re-score pool is re-drawn from every row's newest scores, so rows
    # outside this round's pool can come back in (docs/methods.md, Rounds). Methods without scores
    # (random) keep their own ranking.
    redraw = (cfg.selection.rescore_pool == "rolling" and candidate_ids is not None
              and scores_path is not None)
    if not run.is_done(stage):
        with timed() as t:
            # The newest embeddings of every row hold round r's for its pool: one read serves both.
            embeddings = _embeddings(run, cfg, r, newest=redraw)
            summary = select_round(run.path / "rows.parquet", scores_path, out, cfg.selection,
                                   k=k, n_rank=n_rank, seed=cfg.run.seed + r, candidate_ids=candidate_ids,
                                   embeddings=embeddings)
            if redraw:
                pool = rank_pool(run.path / "rows.parquet", _scores_paths(run, r), cfg.selection, n_rank,
                                 seed=cfg.run.seed + r, embeddings=embeddings)
                with atomic_output(out / RESCORE_POOL_FILE) as tmp:
                    tmp.write_text("\n".join(pool) + "\n")
        run.mark_done(stage, t(), {"k": k, "n_rank": n_rank, **summary})
    ranked, selected = ranked_ids(out / "selection.parquet")
    next_pool = (out / RESCORE_POOL_FILE).read_text().split() if redraw else ranked[:n_rank]
    return {**run.stats(stage), "ranked_ids": ranked, "selected_ids": selected, "next_pool": next_pool}


def train_stage(run: RunDir, cfg: Config, r: int, selected_ids: list[str], base_model: str,
                total_steps: int) -> dict:
    """round-R/checkpoint: the model tuned on this round's selection (continuing the last round's state)."""
    from raysel.training import export_path, train_round

    stage = f"train-{r}"
    if not run.is_done(stage):
        with timed() as t:
            metrics = train_round(cfg, run.path / "rows.parquet", selected_ids, run.path, r, base_model,
                                  total_steps)
        run.mark_done(stage, t(), metrics)
    return {**run.stats(stage), "checkpoint": str(export_path(run.path, r))}


def _scores_path(run: RunDir, cfg: Config, r: int):
    """The round's scores, or None for methods that need none (random, full)."""
    path = run.path / f"round-{r}" / "scores.parquet"
    return path if path.exists() else None


def _scores_paths(run: RunDir, r: int) -> list:
    """Every round's scores up to r, newest first: each row's newest score counts."""
    return [p for p in (run.path / f"round-{i}" / "scores.parquet" for i in range(r, -1, -1)) if p.exists()]


def _embeddings(run: RunDir, cfg: Config, r: int, newest: bool = False):
    """Round r's embeddings (ids, matrix), or with newest=True every row's newest up to round r."""
    if cfg.selection.diversity != "embedding" and cfg.selection.method != "kcenter":
        return None
    from raysel.scoring import read_embeddings
    from raysel.selection.stage import newest_first

    if not newest:
        return read_embeddings(run.path / f"round-{r}")
    rounds = [i for i in range(r, -1, -1) if (run.path / f"round-{i}" / "embeddings.parquet").exists()]
    parts = [dict(zip(("id", "vector"), read_embeddings(run.path / f"round-{i}"), strict=True)) for i in rounds]
    merged = newest_first(parts)
    return merged["id"], merged["vector"]
