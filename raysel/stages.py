"""Each stage once, behind its completion marker (RunDir.stage): the pieces the loops put in
order. Which stages a method runs, and when, is the loops' business, not this module's.

A stage whose marker exists is skipped on --resume; its outputs were renamed into place
before the marker was written, so they are complete.
"""

from __future__ import annotations

import logging
import os
import sys

from raysel.config import Config
from raysel.runs import RunDir, atomic_output

log = logging.getLogger(__name__)


def open_run(cfg: Config, job: str, resume: bool = False, reuse: bool = False) -> RunDir:
    """The run directory, once the model path is known to hold a model (a mistake there is found
    before any work, not in a scoring actor's traceback)."""
    from raysel.models import check_model_path

    check_model_path(cfg.model.path)
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
    if not sys.stdout.isatty():
        # Off a terminal Ray Data logs each pass's progress every 10 s, several lines at a time;
        # raysel.progress logs rows done, rate and time left once a minute instead.
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    log.info("ray cluster: %s", {k: v for k, v in ray.cluster_resources().items() if "node" not in k})
    return ray


def ingest_stage(run: RunDir, cfg: Config, force: bool = False) -> dict:
    """rows.parquet: every input record with a status. Returns the counts."""
    from raysel.pool import ingest, resolve_pool_path

    def compute():
        counts = ingest(resolve_pool_path(cfg.pool), run.rows)
        run.update_manifest(counts=counts)
        present = counts.get("records_present") or "more"
        cut = f" (cut by pool.limit from {present})" if "limit" in counts else ""
        log.info("ingested %d records%s: %d valid, %d invalid %s", counts["records"], cut, counts["valid"],
                 counts["invalid"], counts["invalid_by_reason"])
        return counts

    return run.stage("ingest", compute, force=force)


def score_stage(run: RunDir, cfg: Config, r: int, model: str, ids: list[str] | None = None) -> dict:
    """round-R/scores.parquet (+ embeddings) for the valid rows, or only `ids` (a re-score pool)."""
    from raysel.scoring import score_pool

    def compute():
        return {"model": str(model), **score_pool(run.rows, run.round_dir(r), model, cfg, ids=ids)}

    return run.stage(f"score-{r}", compute)


def select_stage(run: RunDir, cfg: Config, r: int, k: int, n_rank: int,
                 candidate_ids: list[str] | None = None, scores_round: int | None = None) -> dict:
    """round-R/selection.parquet and selected.jsonl, on round `scores_round`'s scores (default r).
    Returns the stage's stats with the ranked and the selected ids."""
    from raysel.selection.daar import daar_options
    from raysel.selection.stage import ranked_ids, select_round

    scores = run.scores(r if scores_round is None else scores_round)

    def compute():
        summary = select_round(run.rows, scores if scores.exists() else None, run.round_dir(r),
                               cfg.selection.method, cfg.iterit, k=k, n_rank=n_rank, seed=cfg.run.seed + r,
                               candidate_ids=candidate_ids,
                               embeddings=_embeddings(run, cfg, [run.embeddings(r)]),
                               options=daar_options(cfg.daar) if cfg.selection.method == "daar" else None,
                               mixture=_mixture(cfg))
        return {"k": k, "n_rank": n_rank, **summary}

    stats = run.stage(f"select-{r}", compute)
    ranked, selected = ranked_ids(run.selection(r))
    return {**stats, "ranked_ids": ranked, "selected_ids": selected}


def rescore_pool_stage(run: RunDir, cfg: Config, r: int, n_rank: int) -> list[str]:
    """round-R/rescore_pool.txt: the n_rank best valid rows, every row ranked on its newest score
    up to round r (rolling re-score pool: rows outside this round's pool can come back in)."""
    from raysel.selection.stage import rank_pool

    def compute():
        embeddings = _embeddings(run, cfg, run.newest("embeddings", r))
        pool = rank_pool(run.rows, run.newest("scores", r), cfg.selection.method, cfg.iterit, n_rank,
                         seed=cfg.run.seed + r, embeddings=embeddings, mixture=_mixture(cfg))
        with atomic_output(run.rescore_pool(r)) as tmp:
            tmp.write_text("\n".join(pool) + "\n")
        return {"size": len(pool)}

    run.stage(f"rescore-pool-{r}", compute)
    return run.rescore_pool(r).read_text().split()


def train_stage(run: RunDir, cfg: Config, r: int, selected_ids: list[str], base_model: str,
                total_steps: int) -> dict:
    """round-R/checkpoint: the model tuned on this round's selection (continuing the last round's state)."""
    from raysel.training import train_round

    stats = run.stage(f"train-{r}", lambda: train_round(cfg, run.rows, selected_ids, run.path, r, base_model,
                                                          total_steps))
    return {**stats, "checkpoint": str(run.checkpoint(r))}


def eval_stage(run: RunDir, cfg: Config, model: str) -> dict:
    """eval.parquet and eval.json: `model` on the held-out sets of cfg.eval.heldout."""
    from raysel.evaluate import evaluate

    stats = run.stage("eval", lambda: evaluate(model, cfg, run.path))
    by_domain = ", ".join(f"{d} {v['loss']:.4f}" + (f" (accuracy {v['accuracy']:.1%})" if v["accuracy"] is not None
                                                    else "") for d, v in stats["by_domain"].items() if v["loss"])
    print(f"held-out loss by domain: {by_domain}", flush=True)
    return stats


def finish_run(run: RunDir) -> None:
    """Mark the run finished and write its report.md. A figure that cannot be drawn must not cost
    a finished run: it is logged, and `raysel report RUN_DIR` draws the report again."""
    from raysel.report import write_report

    run.update_manifest(finished=True)
    try:
        log.info("report: %s", write_report(run.path))
    except Exception:
        log.exception("the report could not be written; retry with `raysel report %s`", run.path)
    report = [p.relative_to(run.path).as_posix() for p in sorted((run.path / "report").rglob("*")) if p.is_file()]
    run.push([*report, "report.md", run.manifest_path.name])


def _mixture(cfg: Config) -> tuple[str, dict] | None:
    """(quota field, quotas) when the config sets mixture quotas."""
    return (cfg.selection.quota_field, cfg.selection.quotas) if cfg.selection.quota_field else None


def _embeddings(run: RunDir, cfg: Config, paths: list) -> list | None:
    """The embedding files (newest first) for selectors that need embeddings, else None."""
    from raysel.selection import get_selector, selector_name

    if not get_selector(selector_name(cfg.selection.method, cfg.iterit.diversity)).needs_embeddings:
        return None
    return [p for p in paths if p.exists()] or None  # none: the selection stage says what is missing
