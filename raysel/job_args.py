"""Command-line plumbing shared by the jobs (jobs/*.py, raysel.loops) and the `raysel` command:
the config options, logging, and user errors reported without a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from raysel.config import UserError, load_config

CONFIG_HELP = """\
configuration:
  Settings come from a YAML file (--config, default: the job's demo config) and are overridden with
  --set SECTION.FIELD=VALUE (VALUE is parsed as YAML: 500, 0.1, true, [a, b]). Sections:
    pool       path, format, *_field, limit
    model      path, max_length
    scoring    prior_context, dtype, batch_size, use_gpu, num_actors, max_actors, embeddings,
               embedding_span
    selection  method, k, rounds
    iterit     diversity, features, diversity_decay, ifd_max, dedup_threshold, rescore_pool,
               rescore_factor
    daar       seed_source, seeds_path, domains, centroid_space, probe_size, probe_layers, head_*,
               select, domain_shares
    training   method, lora_*, learning_rate, batch_size, num_workers, zero_stage, precision
    eval       heldout, accuracy_domains, max_new_tokens
    ray        address, num_cpus
    run        dir, seed, mirror (s3://bucket/prefix: a copy of the run in object storage)
  `pool.path: demo` and `model.path: demo` are the built-in demo pool and SmolLM2-135M-Instruct
  (generated / fetched into ~/.cache/raysel on first use). docs/methods.md says what each method
  field does.
"""


def add_config_args(parser: argparse.ArgumentParser, default_config: Path | None = None) -> None:
    default = f"configs/{default_config.name}" if default_config else "configs/demo.yaml"
    parser.add_argument("--config", metavar="FILE", help=f"YAML config (default: {default})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set selection.k=1000 (repeatable)")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="run directory (default: runs/<job>-<timestamp>); same as --set run.dir=DIR")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last completed stage, with the config "
                             "it started with (a --config or --set that changes results is refused)")


def config_from_args(args: argparse.Namespace, extra: list[str] = (), in_run: bool = False,
                     default_config: Path | None = None):
    """The config of --config (default: `default_config`, else configs/demo.yaml) and --set. With
    --resume (or `in_run`: a stage run by hand in an existing run directory) and no --config, the
    run's own config.yaml (from run.mirror when the run directory does not hold it: a new cluster)."""
    overrides = [*args.overrides, *extra]
    if args.run_dir:
        overrides.append(f"run.dir={args.run_dir}")
    base = args.config or default_config
    saved = Path(args.run_dir) / "config.yaml" if args.run_dir else None
    own = args.config is None and (getattr(args, "resume", False) or in_run) and saved
    if own and not saved.exists() and (mirror := load_config(base, overrides).run.mirror):
        from raysel.mirror import Mirror

        Mirror(mirror).fetch(saved.name, saved.parent)
    if own and saved.exists():
        base = saved
    return load_config(base, overrides)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def job_main(prog: str, description: str, run: Callable, argv: list[str] | None = None,
             default_config: Path | None = None) -> int:
    """A job's command line: parse the config options, run `run(cfg, resume=...)`, and turn a
    user's mistake into one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=CONFIG_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        run(config_from_args(args, default_config=default_config), resume=args.resume)
    except (UserError, FileExistsError) as e:
        print(f"{Path(prog).stem}: error: {e}", file=sys.stderr)
        return 2
    return 0
