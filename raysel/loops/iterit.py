"""The IterIT loop, top to bottom (docs/methods.md, Rounds):

    round 0:   score all valid rows with the base model -> select k -> fine-tune
    round r:   re-score the re-score pool with round r-1's model -> select k -> fine-tune

The re-score pool (iterit.rescore_pool): `fixed`, round 0's top rescore_factor * k; `rolling`,
re-drawn after each round from every row's newest score (round-R/rescore_pool.txt); `all`.

    python jobs/iterit.py                                    # the embedded default (configs/demo.yaml)
    python jobs/iterit.py --config configs/tiny.yaml --run-dir runs/tiny
    python jobs/iterit.py --run-dir runs/tiny --resume       # continue from the last completed stage
    python jobs/iterit.py --set selection.method=random      # a baseline, same job, same budget

Baselines share the loop: `ifd` ranks by IFD alone, re-scored each round (IterIT's ablation);
`ifd_static` keeps the base model's top-k IFD every round (scored once); `random` draws at
random; `full` trains once on every valid row. `random` and `full` need no scores.
"""

from __future__ import annotations

import logging

from raysel.config import Config
from raysel.runs import RunDir

log = logging.getLogger(__name__)


def run_iterit(cfg: Config, resume: bool = False) -> RunDir:
    from raysel.loops.plan import plan_budget, plan_round
    from raysel.models import resolve_model_path
    from raysel.selection import selector_name
    from raysel.stages import (
        eval_stage,
        finish_run,
        ingest_stage,
        open_run,
        rescore_pool_stage,
        score_stage,
        select_stage,
        start_ray,
        train_stage,
    )

    run = open_run(cfg, "iterit", resume=resume)
    start_ray(cfg)
    counts = ingest_stage(run, cfg)
    base_model = resolve_model_path(cfg.model.path)
    sel, it = cfg.selection, cfg.iterit
    budget = plan_budget(cfg, counts["valid"])
    log.info("IterIT: %d valid rows, k=%d, %d round(s), re-score pool %d (%s), %d optimizer steps in all",
             counts["valid"], budget.k, budget.rounds, budget.n_rank, it.rescore_pool, budget.total_steps)

    model, rescore_pool = base_model, None  # None: every valid row
    for r in range(budget.rounds):
        plan = plan_round(selector_name(sel.method, it.diversity), it.rescore_pool, r, rescore_pool)
        scores = score_stage(run, cfg, r, model, ids=plan.candidates) if plan.score else None
        picked = select_stage(run, cfg, r, k=budget.k, n_rank=budget.n_rank, candidate_ids=plan.candidates,
                              scores_round=plan.scores_round)
        if r == 0 or it.rescore_pool == "rolling":
            # rolling: re-drawn from every row's newest score; a round without scores keeps its ranking
            redraw = r > 0 and plan.score
            rescore_pool = (rescore_pool_stage(run, cfg, r, budget.n_rank) if redraw
                            else picked["ranked_ids"][:budget.n_rank])
        trained = train_stage(run, cfg, r, picked["selected_ids"], base_model, budget.total_steps)
        model = trained["checkpoint"]
        print_round_summary(r, scores, picked, trained)
    if cfg.eval.heldout:
        eval_stage(run, cfg, model)
    finish_run(run)
    log.info("done: %s", run.path)
    return run


def print_round_summary(r: int, scores: dict | None, picked: dict, trained: dict) -> None:
    parts = [f"round {r}: selected {len(picked['selected_ids'])}"]
    if picked.get("mean_ifd_selected") is not None:
        parts.append(f"mean IFD selected {picked['mean_ifd_selected']:.3f} vs pool {picked['mean_ifd_pool']:.3f}")
    parts.append(f"train loss {trained['mean_loss']:.4f} (last {trained['final_loss']:.4f})")
    times = {"score": scores and scores.get("seconds"), "select": picked.get("seconds"),
             "train": trained.get("seconds")}
    parts.append("time " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items() if v is not None))
    print(" | ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    from raysel.job_args import job_main

    return job_main("jobs/iterit.py", __doc__, run_iterit, argv)
