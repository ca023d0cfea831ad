"""Does the selection help? Every method on the demo pool with the same budget and three seeds:
held-out loss per domain, arithmetic accuracy, and what each method chose (defects, domains).

    python benchmarks/quality.py                          # sized for a 2-core CPU box
    python benchmarks/quality.py --seeds 1 --methods random,iterit_tfidf --out runs/quality-try
    python benchmarks/quality.py --out runs/quality       # again: finished runs are read, not rerun

Every method selects k rows per round for the same rounds and trains them with the same
LoRA settings and learning-rate schedule (configs/demo.yaml's; DaaR's section from
configs/daar-demo.yaml); `full` trains once on every valid row. Each run is a real job (the
loops of jobs/iterit.py and jobs/daar.py, Ray Train + DeepSpeed) in OUT/<method>-s<seed>,
ending with `raysel eval` on the demo pool's held-out sets. `base` is the untuned model.

Reused work: the base model's round-0 scores (IFD and embeddings) and DaaR's seeds and round-0
probe features depend on the model and the row, not on the seed or the selector. They are
computed once in OUT/shared and copied, with their completion markers (marked `reused_from`),
into each run before it starts; the run resumes past them. Everything that depends on the seed
or on a tuned model (selection, training, re-scoring, DaaR's heads and rewards, eval) runs per
run. `full` runs one seed by default (--full-seeds): it trains on every row, n/k times the
others' work, and its seed only reorders its batches.

Defect share: of the rows each run trained on (every round's selection, with repeats), the share
the demo pool marks defective (duplicate, near-duplicate, unrelated, truncated; empty answers
never get past ingestion). Prints a markdown table, writes OUT/quality.md and OUT/quality.png,
and its last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METHODS = {  # name -> overrides of the base config
    "random": ["selection.method=random"],
    "ifd_static": ["selection.method=ifd_static"],
    "iterit_tfidf": ["selection.method=iterit", "iterit.diversity=tfidf"],
    "iterit_embedding": ["selection.method=iterit", "iterit.diversity=embedding"],
    "daar": ["selection.method=daar"],
    "full": ["selection.method=full"],
    # not in the default list: DaaR with a quota per pseudo-domain (see docs/methods.md)
    "daar_per_domain": ["selection.method=daar", "daar.select=per_domain"],
}
DEFAULT_METHODS = ["random", "ifd_static", "iterit_tfidf", "iterit_embedding", "daar", "full"]
SHARED_FILES = {  # stage -> the files it leaves, relative to the run directory
    "ingest": ["rows.parquet"],
    "score-0": ["round-0/scores.parquet", "round-0/embeddings.parquet"],
    "seeds": ["seeds.jsonl"],
    "probe-0": ["round-0/probe.parquet"],
}
SHARED_BY = {"iterit": ["ingest", "score-0"], "daar": ["ingest", "seeds", "probe-0"],
             "none": ["ingest"]}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    heldout = write_heldout(out / "heldout", args.heldout_per_domain)
    k = int(args.k) if args.k >= 1 else args.k
    common = [f"pool.limit={args.pool_rows}", f"selection.k={k}", f"selection.rounds={args.rounds}",
              f"training.batch_size={args.batch_size}",
              f"eval.heldout=[{heldout}]", f"eval.max_new_tokens={args.max_new_tokens}"]

    from raysel.stages import start_ray

    start_ray(config("iterit_tfidf", 0, out / "shared", common))
    shared = prepare_shared(out / "shared", common)
    runs = [(m, s) for m in args.methods for s in range(args.full_seeds if m == "full" else args.seeds)]
    results = {}
    for i, (method, seed) in enumerate(runs):
        run_dir = out / f"{method}-s{seed}"
        results[(method, seed)] = run_one(method, seed, run_dir, shared, common)
        elapsed = time.perf_counter() - began
        r = results[(method, seed)]
        print(f"[{i + 1}/{len(runs)}] {method} seed {seed}: held-out mean loss {r['mean_loss']:.4f}, "
              f"defect share {r['defect_share']:.1%}, {r['seconds']:.0f}s (elapsed {elapsed / 60:.1f} min)",
              flush=True)
    base = evaluate_base(out / "base", common)
    summary = summarise(results, base, args, out, seconds=time.perf_counter() - began)
    table = markdown(summary)
    print(table)
    (out / "quality.md").write_text(table + "\n")
    plot(summary, out / "quality.png")
    print(json.dumps(summary))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/quality", help="where the runs and the report go (default: %(default)s)")
    ap.add_argument("--pool-rows", type=int, default=120, help="demo pool rows (pool.limit; default: %(default)s)")
    ap.add_argument("--k", type=float, default=12, help="rows per round: a count, or a fraction of the valid rows "
                                                        "(default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="(default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=4, help="training rows per step (default: %(default)s, so "
                                                              "that the default k fills whole steps)")
    ap.add_argument("--seeds", type=int, default=3, help="run seeds per method (default: %(default)s)")
    ap.add_argument("--full-seeds", type=int, default=1, help="run seeds of `full` (default: %(default)s)")
    ap.add_argument("--heldout-per-domain", type=int, default=15, help="held-out rows per domain (<= 50; "
                                                                        "default: %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=48,
                    help="greedy answer length for the accuracy check (default: %(default)s; SmolLM2-135M gets "
                         "none of the held-out problems right at 128 either: docs/methods.md)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help="comma-separated, of: " + ", ".join(METHODS) + " (default: %(default)s)")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings only from the jobs' logs")
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return args


# --- the runs ------------------------------------------------------------------------------------

def config(method: str, seed: int, run_dir: Path, common: list[str]):
    from raysel.config import CONFIG_DIR, load_config

    base = CONFIG_DIR / ("daar-demo.yaml" if method.startswith("daar") else "demo.yaml")
    return load_config(base, [*METHODS[method], *common, f"run.seed={seed}", f"run.dir={run_dir}"])


def write_heldout(folder: Path, per_domain: int) -> Path:
    """The first `per_domain` rows of each of the demo pool's held-out sets."""
    from raysel.demo.pool import ensure_demo_pool

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((ensure_demo_pool().parent / "heldout").glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()[:per_domain]
        (folder / path.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder.resolve()


def prepare_shared(path: Path, common: list[str]):
    """OUT/shared: ingestion, the base model's round-0 scores with embeddings, DaaR's seeds and
    round-0 probe features; computed once for every run."""
    from raysel.daar.stage import probe_stage, seeds_stage
    from raysel.models import resolve_model_path
    from raysel.stages import ingest_stage, open_run, score_stage

    cfg = config("iterit_embedding", 0, path, common)
    daar_cfg = config("daar", 0, path, common)
    run = open_run(cfg, "shared", resume=True)
    ingest_stage(run, cfg)
    model = resolve_model_path(cfg.model.path)
    score_stage(run, cfg, 0, model)
    probe_stage(run, daar_cfg, 0, model, seeds_stage(run, daar_cfg, model))
    return run


def run_one(method: str, seed: int, run_dir: Path, shared, common: list[str]) -> dict:
    """One job, started from the shared stages (or read, when it finished before)."""
    from raysel.loops.daar import run_daar
    from raysel.loops.iterit import run_iterit
    from raysel.runs import RunDir

    cfg = config(method, seed, run_dir, common)
    run = RunDir(run_dir)
    if not run.read_manifest().get("finished"):
        job = "daar" if method.startswith("daar") else "iterit"
        run = RunDir.create(cfg, job, resume=True)
        for stage in SHARED_BY[job if method not in ("random", "full") else "none"]:
            copy_stage(shared, run, stage)
        (run_daar if job == "daar" else run_iterit)(cfg, resume=True)
    return measure(run)


def copy_stage(src, dst, stage: str) -> None:
    """A shared stage's outputs and marker, into another run (which then resumes past it)."""
    if dst.is_done(stage):
        return
    for rel in SHARED_FILES[stage]:
        source, target = src.path / rel, dst.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():  # rows.parquet is a folder of parts
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, target)
    stats = src.stats(stage)
    seconds = stats.pop("seconds")
    dst.mark_done(stage, 0.0, {**stats, "reused_from": str(src.path), "seconds_there": seconds})


def evaluate_base(path: Path, common: list[str]) -> dict:
    from raysel.evaluate import evaluate
    from raysel.models import resolve_model_path

    if not (path / "eval.json").exists():
        cfg = config("random", 0, path, common)
        evaluate(resolve_model_path(cfg.model.path), cfg, path)
    return json.loads((path / "eval.json").read_text())


# --- the figures of one run -----------------------------------------------------------------------

def measure(run) -> dict:
    """Held-out figures and what the run trained on (every round's selection, with repeats)."""
    import pyarrow.parquet as pq

    ev = json.loads((run.path / "eval.json").read_text())
    stages = run.read_manifest()["stages"].values()
    raw = {r["id"]: json.loads(r["raw"]) for r in pq.read_table(run.rows, columns=["id", "raw"]).to_pylist()}
    trained, r = [], 0
    while run.selection(r).exists():
        sel = pq.read_table(run.selection(r), columns=["id", "selected"]).to_pylist()
        trained += [raw[s["id"]] for s in sel if s["selected"]]
        r += 1
    defects = Counter(t.get("defect", "none") for t in trained)
    arith = ev["by_domain"].get("arithmetic", {})
    return {"seconds": sum(st.get("seconds", 0) for st in stages),  # the reused stages count 0
            "mean_loss": ev["mean_loss"],
            "loss_by_domain": {d: v["loss"] for d, v in ev["by_domain"].items()},
            "arith_accuracy": arith.get("accuracy"),
            "trained_rows": len(trained),
            "defect_share": 1 - defects["none"] / max(1, len(trained)),
            "defects": {k: v for k, v in defects.items() if k != "none"},
            "domain_mix": {d: n / max(1, len(trained)) for d, n in sorted(Counter(t["domain"] for t in trained).items())}}


# --- the summary -----------------------------------------------------------------------------------

def summarise(results: dict, base: dict, args, out: Path, seconds: float) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "shared" / "rows.parquet", columns=["status", "raw"])
    valid = rows.filter(pc.equal(rows["status"], "valid"))["raw"].to_pylist()
    pool_defects = 1 - sum(json.loads(r).get("defect") == "none" for r in valid) / len(valid)
    methods = {}
    for method in dict.fromkeys(m for m, _ in results):
        per_seed = [results[k] for k in sorted(results) if k[0] == method]
        domains = sorted(per_seed[0]["loss_by_domain"])
        methods[method] = {
            "seeds": len(per_seed),
            "mean_heldout_loss": _spread([r["mean_loss"] for r in per_seed]),
            "loss_by_domain": {d: _spread([r["loss_by_domain"][d] for r in per_seed]) for d in domains},
            "arith_accuracy": _spread([r["arith_accuracy"] for r in per_seed]),
            "defect_share": _spread([r["defect_share"] for r in per_seed]),
            "domain_mix": {d: round(float(np.mean([r["domain_mix"].get(d, 0.0) for r in per_seed])), 4)
                           for d in domains},
            "trained_rows": per_seed[0]["trained_rows"],
            "seconds": _spread([r["seconds"] for r in per_seed]),
        }
    if "random" in methods:
        ref = methods["random"]["mean_heldout_loss"]["mean"]
        for m in methods.values():
            m["loss_vs_random"] = round(m["mean_heldout_loss"]["mean"] - ref, 4)
    return {"benchmark": "quality", "pool_rows": args.pool_rows, "valid_rows": len(valid),
            "pool_defect_share": round(pool_defects, 4), "k": args.k, "rounds": args.rounds, "batch_size": args.batch_size,
            "heldout_per_domain": args.heldout_per_domain, "max_new_tokens": args.max_new_tokens,
            "base": {"mean_heldout_loss": base["mean_loss"],
                     "loss_by_domain": {d: v["loss"] for d, v in base["by_domain"].items()},
                     "arith_accuracy": base["by_domain"].get("arithmetic", {}).get("accuracy")},
            "methods": methods, "seconds": round(seconds, 1)}


def _spread(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "per_seed": values}
    return {"mean": round(float(np.mean(vals)), 4), "std": round(float(np.std(vals)), 4),
            "per_seed": [None if v is None else round(float(v), 4) for v in values]}


def markdown(s: dict) -> str:
    domains = sorted(s["base"]["loss_by_domain"])
    head = ["method", "seeds", "mean held-out loss", "vs random", *domains, "arith. acc.", "defect share",
            "domain mix (" + "/".join(d[:4] for d in domains) + ")"]
    lines = [f"Demo pool: {s['valid_rows']} valid rows ({s['pool_defect_share']:.1%} defective), k={s['k']} "
             f"per round, {s['rounds']} rounds; held-out: {s['heldout_per_domain']} rows per domain. "
             f"Mean ± std over seeds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = s["base"]
    lines.append("| base (untuned) | - | " + f"{base['mean_heldout_loss']:.4f} | - | "
                 + " | ".join(f"{base['loss_by_domain'][d]:.4f}" for d in domains)
                 + f" | {_pct(base['arith_accuracy'])} | - | - |")
    for name, m in s["methods"].items():
        mix = "/".join(f"{100 * m['domain_mix'][d]:.0f}" for d in domains)
        vs = m.get("loss_vs_random")
        lines.append(f"| {name} | {m['seeds']} | {_pm(m['mean_heldout_loss'])} | "
                     + ("-" if vs is None or name == "random" else f"{vs:+.4f}") + " | "
                     + " | ".join(_pm(m["loss_by_domain"][d]) for d in domains)
                     + f" | {_pct(m['arith_accuracy']['mean'])} | {_pct(m['defect_share']['mean'])} | {mix} |")
    return "\n".join(lines)


def _pm(x: dict) -> str:
    return "-" if x["mean"] is None else f"{x['mean']:.4f} ± {x['std']:.4f}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def plot(s: dict, path: Path) -> None:
    """Three panels: mean held-out loss per method (seeds as dots), its change per domain, and
    what each method trained on. `full` trains on every row: far below the selectors, it is a
    line in the first panel and left out of the second, so that their differences stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, domains = s["methods"], sorted(s["base"]["loss_by_domain"])
    names = [n for n in methods if n != "full"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(18, 5.2))
    x = np.arange(len(names))
    for i, name in enumerate(names):
        m = methods[name]["mean_heldout_loss"]
        a.scatter([i] * len(m["per_seed"]), m["per_seed"], color="tab:blue", s=16, alpha=0.6, zorder=3)
        a.errorbar(i, m["mean"], yerr=m["std"], fmt="_", color="black", markersize=18, capsize=4, zorder=4)
    a.axhline(s["base"]["mean_heldout_loss"], color="gray", ls="--", label="base model (untuned)")
    if "random" in methods:
        a.axhline(methods["random"]["mean_heldout_loss"]["mean"], color="tab:blue", ls=":", label="random (mean)")
    if "full" in methods:
        a.text(0.02, 0.02, f"full (every row): {methods['full']['mean_heldout_loss']['mean']:.4f}, below the axis",
               transform=a.transAxes, fontsize=8)
    a.set(xticks=x, title="Held-out loss, mean over domains (dots: seeds; bar: mean ± std)",
          ylabel="answer-token loss (nats)")
    a.set_xticklabels(names, rotation=30, ha="right")
    a.legend(loc="upper left", fontsize=8)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        deltas = [methods[name]["loss_by_domain"][d]["mean"] - s["base"]["loss_by_domain"][d] for d in domains]
        b.bar(np.arange(len(domains)) + i * width, deltas, width, label=name)
    b.axhline(0, color="gray", lw=0.8)
    b.set(xticks=np.arange(len(domains)) + width * (len(names) - 1) / 2,
          title="Held-out loss change from the base model, per domain", ylabel="loss - base loss (lower is better)")
    b.set_xticklabels(domains)
    b.legend(fontsize=8)
    everyone = list(methods)
    x = np.arange(len(everyone))
    bottom = np.zeros(len(everyone))
    for d in domains:
        share = np.array([methods[n]["domain_mix"][d] for n in everyone]) * 100
        c.bar(x, share, bottom=bottom, label=d)
        bottom += share
    c.scatter(x, [100 * methods[n]["defect_share"]["mean"] for n in everyone], color="black", marker="x",
              zorder=3, label="defective rows")
    c.axhline(100 * s["pool_defect_share"], color="black", ls=":", lw=1, label="defective in the pool")
    c.set(xticks=x, title="What each method trained on", ylabel="% of trained rows", ylim=(0, 100))
    c.set_xticklabels(everyone, rotation=30, ha="right")
    c.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
