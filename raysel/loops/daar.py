"""The DaaR loop, top to bottom (docs/methods.md, DaaR):

    seeds:     the domain seeds, from daar.seeds_path or synthesised by the base model
    round r:   probe features (the model's first daar.probe_layers layers) of the seeds and a probe set
               -> domain centroids -> k-means pseudo-labels -> domain head + reward head
               -> every valid row's predicted reward -> select k -> fine-tune the full model

Round r > 0 repeats the round with the model tuned so far (the reference code selects once).

    python jobs/daar.py                                       # the embedded default (configs/daar-demo.yaml)
    python jobs/daar.py --config configs/tiny.yaml --set selection.method=daar --run-dir runs/daar-tiny
    python jobs/daar.py --run-dir runs/daar-tiny --resume     # continue from the last completed stage
    python jobs/daar.py --set daar.select=per_domain          # a quota per pseudo-domain
"""

from __future__ import annotations

import logging

from raysel.config import CONFIG_DIR, Config, ConfigError
from raysel.runs import RunDir

log = logging.getLogger(__name__)

DEFAULT_CONFIG = CONFIG_DIR / "daar-demo.yaml"


def run_daar(cfg: Config, resume: bool = False) -> RunDir:
    from raysel.daar.features import check_probe_layers
    from raysel.daar.stage import heads_stage, probe_stage, reward_stage, seeds_stage
    from raysel.loops.plan import plan_budget
    from raysel.models import resolve_model_path
    from raysel.stages import (
        eval_stage,
        finish_run,
        ingest_stage,
        open_run,
        select_stage,
        start_ray,
        train_stage,
    )

    if cfg.selection.method != "daar":
        raise ConfigError(f"jobs/daar.py runs selection.method=daar, got {cfg.selection.method!r} "
                          "(the other methods are jobs/iterit.py's)")
    run = open_run(cfg, "daar", resume=resume)
    start_ray(cfg)
    counts = ingest_stage(run, cfg)
    base_model = resolve_model_path(cfg.model.path)
    check_probe_layers(base_model, cfg.daar.probe_layers, cfg.model.trust_remote_code)
    budget = plan_budget(cfg, counts["valid"])
    log.info("DaaR: %d valid rows, k=%d (%s), %d round(s), %d optimizer steps in all", counts["valid"],
             budget.k, cfg.daar.select, budget.rounds, budget.total_steps)
    seeds = seeds_stage(run, cfg, base_model)

    model = base_model
    for r in range(budget.rounds):
        probe_stage(run, cfg, r, model, seeds)
        heads = heads_stage(run, cfg, r)
        rewards = reward_stage(run, cfg, r, model, heads["domains"])
        picked = select_stage(run, cfg, r, k=budget.k, n_rank=budget.n_rank)
        trained = train_stage(run, cfg, r, picked["selected_ids"], base_model, budget.total_steps)
        model = trained["checkpoint"]
        print_round_summary(r, heads, rewards, picked, trained)
    if cfg.eval.heldout:
        eval_stage(run, cfg, model)
    finish_run(run)
    log.info("done: %s", run.path)
    return run


def print_round_summary(r: int, heads: dict, rewards: dict, picked: dict, trained: dict) -> None:
    mix = ", ".join(f"{d} {n}" for d, n in picked.get("per_domain", {}).items())
    parts = [f"round {r}: selected {picked['selected']} ({mix})",
             f"domain head val acc {heads['domain_val_accuracy']}",
             f"mean reward selected {_fmt(picked['mean_reward_selected'])} vs pool {_fmt(picked['mean_reward_pool'])}",
             f"train loss {trained['mean_loss']:.4f}",
             f"time reward {rewards['seconds']:.0f}s, train {trained['seconds']:.0f}s"]
    print(" | ".join(parts), flush=True)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    from raysel.job_args import job_main

    return job_main("jobs/daar.py", __doc__, run_daar, argv, default_config=DEFAULT_CONFIG)

