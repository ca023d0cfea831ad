"""The IterIT loop, top to bottom (docs/methods.md, Rounds):

    round 0:   score all valid rows with the base model -> select k -> fine-tune
    round r:   re-score the re-score pool with round r-1's model -> select k -> fine-tune

The re-score pool (selection.rescore_pool): `fixed`, round 0's top rescore_factor * k; `rolling`,
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

import argparse
import logging
import sys
from dataclasses import dataclass

from raysel.config import Config, UserError, resolve_k
from raysel.runs import RunDir

log = logging.getLogger(__name__)

RESCORED_EACH_ROUND = {"iterit", "ifd", "kcenter"}  # scored by the model as tuned so far, every round
SCORED_ONCE = {"ifd_static"}  # scored by the base model in round 0; those scores decide every round


def run_iterit(cfg: Config, resume: bool = False) -> RunDir:
    from raysel.models import resolve_model_path
    from raysel.stages import ingest_stage, open_run, score_stage, select_stage, start_ray, train_stage
    from raysel.training.plan import total_steps

    run = open_run(cfg, "iterit", resume=resume)
    start_ray(cfg)
    counts = ingest_stage(run, cfg)
    base_model = resolve_model_path(cfg.model.path)
    sel = cfg.selection
    full = sel.method == "full"
    k = counts["valid"] if full else resolve_k(sel.k, counts["valid"])
    rounds = 1 if full else sel.rounds
    n_rank = k if full else min(counts["valid"], round(sel.rescore_factor * k))
    steps = total_steps(k, rounds, cfg.training)
    log.info("IterIT: %d valid rows, k=%d, %d round(s), re-score pool %d (%s), %d optimizer steps in all",
             counts["valid"], k, rounds, n_rank, sel.rescore_pool, steps)

    model, rescore_pool = base_model, None  # None: every valid row
    for r in range(rounds):
        plan = plan_round(sel.method, sel.rescore_pool, r, rescore_pool)
        scores = score_stage(run, cfg, r, model, ids=plan.candidates) if plan.score else None
        picked = select_stage(run, cfg, r, k=k, n_rank=n_rank, candidate_ids=plan.candidates,
                              scores_round=plan.scores_round)
        if r == 0 or sel.rescore_pool == "rolling":
            rescore_pool = picked["next_pool"]
        trained = train_stage(run, cfg, r, picked["selected_ids"], base_model, steps)
        model = trained["checkpoint"]
        print_round_summary(r, scores, picked, trained)
    run.update_manifest(finished=True)
    log.info("done: %s", run.path)
    return run


@dataclass(frozen=True)
class RoundPlan:
    score: bool  # score the candidates this round, with the model as tuned so far
    candidates: list[str] | None  # the rows ranked this round (None: every valid row)
    scores_round: int  # the round whose scores rank them


def plan_round(method: str, rescore_pool_mode: str, r: int, rescore_pool: list[str] | None) -> RoundPlan:
    """What round r scores and ranks. Round 0 and rescore_pool=all take every valid row, the
    other rounds the re-score pool; ifd_static ranks every row on round 0's scores, every round."""
    if method in SCORED_ONCE:
        return RoundPlan(score=r == 0, candidates=None, scores_round=0)
    candidates = None if r == 0 or rescore_pool_mode == "all" else rescore_pool
    return RoundPlan(score=method in RESCORED_EACH_ROUND, candidates=candidates, scores_round=r)


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
    from raysel.cli import CONFIG_HELP, add_config_args, config_from_args, setup_logging

    parser = argparse.ArgumentParser(prog="jobs/iterit.py", description=__doc__, epilog=CONFIG_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        run_iterit(config_from_args(args), resume=args.resume)
    except (UserError, FileExistsError) as e:
        print(f"iterit: error: {e}", file=sys.stderr)
        return 2
    return 0
