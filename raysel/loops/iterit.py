"""The IterIT loop, top to bottom (ALGORITHMS.md 1.4):

    round 0:   score all valid rows with the base model -> select k -> fine-tune
    round r:   re-score the re-score pool with round r-1's model -> select k -> fine-tune

The re-score pool (selection.rescore_pool): `fixed`, round 0's top rescore_factor * k; `rolling`,
re-drawn after each round from every row's newest score (round-R/rescore_pool.txt); `all`.

    python jobs/iterit.py                                    # the embedded default (configs/demo.yaml)
    python jobs/iterit.py --config configs/tiny.yaml --run-dir runs/tiny
    python jobs/iterit.py --run-dir runs/tiny --resume       # continue from the last completed stage
    python jobs/iterit.py --set selection.method=random      # a baseline, same job, same budget

Baselines share the loop: `ifd` ranks by IFD alone, `random` draws at random, `full` trains
once on every valid row. `random` and `full` need no scores, so they skip scoring.
"""

from __future__ import annotations

import argparse
import logging
import sys

from raysel.config import Config, UserError, resolve_k
from raysel.runs import RunDir

log = logging.getLogger(__name__)

NEEDS_SCORES = {"iterit", "ifd", "kcenter"}


def run_iterit(cfg: Config) -> RunDir:
    from raysel.models import resolve_model_path
    from raysel.stages import ingest_stage, open_run, score_stage, select_stage, start_ray, train_stage
    from raysel.training.plan import total_steps

    run = open_run(cfg, "iterit")
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

    model, candidates = base_model, None  # None: every valid row
    for r in range(rounds):
        scores = None
        if sel.method in NEEDS_SCORES:
            rescore = None if r == 0 or sel.rescore_pool == "all" else candidates
            scores = score_stage(run, cfg, r, model, ids=rescore)
        picked = select_stage(run, cfg, r, k=k, n_rank=n_rank, candidate_ids=candidates)
        if r == 0 or sel.rescore_pool == "rolling":
            candidates = picked["next_pool"]
        trained = train_stage(run, cfg, r, picked["selected_ids"], base_model, steps)
        model = trained["checkpoint"]
        print_round_summary(r, scores, picked, trained)
    run.update_manifest(finished=True)
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
    from raysel.cli import CONFIG_HELP, add_config_args, config_from_args, setup_logging

    parser = argparse.ArgumentParser(prog="jobs/iterit.py", description=__doc__, epilog=CONFIG_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        run_iterit(config_from_args(args))
    except (UserError, FileExistsError) as e:
        print(f"iterit: error: {e}", file=sys.stderr)
        return 2
    return 0
