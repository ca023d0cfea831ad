"""report.md: what a run did, on one page with pictures.

    raysel report RUN_DIR        # (re)writes RUN_DIR/report.md and RUN_DIR/report/*.png

The jobs write it when they finish. It reads only the run directory (config.yaml,
manifest.json, rows.parquet, round-R/*.parquet, the stage markers, eval.json), so it can be
written again at any time, also for a run that stopped half way: it shows what is there.

Sections: the row accounting (every input row: selected, not selected, or excluded with its
reason, per round), score distributions per round (IFD for the IterIT family, predicted reward
for DaaR), the selected set against the pool across rounds (mean score, domain mix), training
loss per optimizer step, held-out results, stage timings.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raysel.config import UserError
from raysel.runs import RunDir

REPORT_FILE = "report.md"
FIGURES_DIR = "report"
SCORE_COLUMN = {"daar": ("reward", "predicted diversity reward")}  # the rest: IFD
DEFAULT_SCORE = ("ifd", "IFD (answer loss with / without the instruction)")


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.md and its figures; returns the report's path."""
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise UserError(f"{run.path} is not a run directory (no manifest.json)")
    facts = gather(run)
    figures = run.path / FIGURES_DIR
    figures.mkdir(exist_ok=True)
    parts = [header(facts), accounting(facts), scores_section(facts, figures), selection_section(facts, figures),
             training_section(facts, figures), eval_section(facts, figures), timings_section(facts, figures)]
    path = run.path / REPORT_FILE
    path.write_text("\n\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    return path


# --- what the run directory holds ---------------------------------------------------------------

def gather(run: RunDir) -> dict:
    import yaml

    manifest = run.read_manifest()
    config = yaml.safe_load((run.path / "config.yaml").read_text()) if (run.path / "config.yaml").exists() else {}
    rows = pq.read_table(run.rows, columns=["id", "status", "reason", "raw"]).to_pylist() if run.rows.exists() else []
    domain = {r["id"]: _domain(r["raw"]) for r in rows}
    rounds = []
    while run.selection(len(rounds)).exists():
        rounds.append(pq.read_table(run.selection(len(rounds))).to_pylist())
    method = (config.get("selection") or {}).get("method", "?")
    return {"run": run, "manifest": manifest, "config": config, "method": method, "rows": rows,
            "domain": domain if any(domain.values()) else None, "rounds": rounds,
            "stages": manifest.get("stages", {}),
            "eval": json.loads((run.path / "eval.json").read_text()) if (run.path / "eval.json").exists() else None}


def _domain(raw: str | None) -> str | None:
    """The row's own `domain` field, when the data has one (never read by a selector)."""
    try:
        value = json.loads(raw).get("domain") if raw else None
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


def _reason(reason: str | None) -> str:
    """A reason without its row-specific detail: "unscored: no answer token within max_length=256"."""
    return re.sub(r" \([^)]*\)$", "", reason or "")


# --- sections -------------------------------------------------------------------------------------

def header(f: dict) -> str:
    m, c = f["manifest"], f["config"]
    state = "finished" if m.get("finished") else "not finished (the report shows what is there)"
    model, pool = (c.get("model") or {}).get("path"), (c.get("pool") or {}).get("path")
    sel = c.get("selection") or {}
    return (f"# raysel run report: {f['run'].path.name}\n\n"
            f"- job `{m.get('job')}`, method `{f['method']}`, {state}; started {m.get('created')}\n"
            f"- model `{model}`, pool `{pool}` (limit {(c.get('pool') or {}).get('limit')}), "
            f"k {sel.get('k')} per round, {sel.get('rounds')} round(s), seed {m.get('seed')}\n"
            f"- regenerate: `raysel report {f['run'].path}`; the settings: `config.yaml`")


def accounting(f: dict) -> str:
    """Every input row, counted: ingestion, then each round's selection. Counts must reconcile."""
    rows = f["rows"]
    if not rows:
        return "## Rows\n\nNo rows.parquet yet: the run stopped before ingestion finished."
    invalid = Counter(r["reason"] for r in rows if r["status"] != "valid")
    lines = ["## Rows", "", f"{len(rows)} input rows: {len(rows) - sum(invalid.values())} valid, "
             f"{sum(invalid.values())} excluded at ingestion"
             + "".join(f"; {n} {reason}" for reason, n in invalid.most_common()) + ".", "",
             "| round | selected | not selected | excluded (reason: rows) | total | reconciles |", "|---|---|---|---|---|---|"]
    for r, sel in enumerate(f["rounds"]):
        picked = sum(1 for s in sel if s["selected"])
        plain = sum(1 for s in sel if not s["selected"] and s["reason"] == "not selected")
        excluded = Counter(_reason(s["reason"]) for s in sel if not s["selected"] and s["reason"] != "not selected")
        total = picked + plain + sum(excluded.values())
        detail = "; ".join(f"{reason}: {n}" for reason, n in excluded.most_common()) or "-"
        lines.append(f"| {r} | {picked} | {plain} | {detail} | {total} | "
                     f"{'yes' if total == len(rows) else f'NO: {len(rows)} input rows'} |")
    ever = {s["id"] for sel in f["rounds"] for s in sel if s["selected"]}
    if f["rounds"]:
        lines += ["", f"{len(ever)} distinct rows were selected in some round. Per row: "
                  "`round-R/selection.parquet` (`selected`, `rank`, `reason`)."]
    return "\n".join(lines)


def scores_section(f: dict, figures: Path) -> str:
    column, label = SCORE_COLUMN.get(f["method"], DEFAULT_SCORE)
    rounds = [[s for s in sel if _finite(s.get(column))] for sel in f["rounds"]]
    if not any(rounds):
        return f"## Scores\n\nMethod `{f['method']}` ranks on no score: nothing to show."
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(rounds), figsize=(4.2 * len(rounds), 3.4), squeeze=False)
    for r, (ax, scored) in enumerate(zip(axes[0], rounds, strict=True)):
        # a few huge IFDs would squeeze the rest into one bar: the top 1% go into the last bin
        top = float(np.percentile([s[column] for s in scored], 99))
        values = np.minimum([s[column] for s in scored], top)
        picked = np.minimum([s[column] for s in scored if s["selected"]], top)
        bins = np.histogram_bin_edges(values, bins=30)
        ax.hist(values, bins=bins, color="tab:gray", alpha=0.6, label=f"ranked ({len(values)})")
        ax.hist(picked, bins=bins, color="tab:orange", label=f"selected ({len(picked)})")
        ax.set(title=f"round {r}", xlabel=label, ylabel="rows")
        ax.legend(fontsize=8)
    _save(fig, figures / "scores.png")
    return (f"## Scores\n\nThe distribution of `{column}` over the rows each round ranked, and over the rows it "
            f"selected (values above the 99th percentile are counted in the last bin).\n\n![scores]({FIGURES_DIR}/scores.png)")


def selection_section(f: dict, figures: Path) -> str:
    """The selected rows against the ranked ones, round by round: mean score, and mix."""
    if not f["rounds"]:
        return ""
    column, label = SCORE_COLUMN.get(f["method"], DEFAULT_SCORE)
    means = [_means(sel, column) for sel in f["rounds"]]
    scored = any(m[1] is not None for m in means)
    mixes, quotas = mix_by_round(f), quota_lines(f)
    if not scored and not mixes:
        return "\n".join(["## Selection across rounds", "", *quotas]) if quotas else ""
    plt = _pyplot()
    panels = int(scored) + len(mixes)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    axes, text = list(axes[0]), ["## Selection across rounds", ""]
    if scored:
        ax, x = axes.pop(0), np.arange(len(means))
        ax.plot(x, [np.nan if m[0] is None else m[0] for m in means], "o-", label="selected")
        ax.plot(x, [np.nan if m[1] is None else m[1] for m in means], "s--", color="tab:gray", label="all ranked")
        ax.set(title=f"mean {column} per round", xlabel="round", ylabel=label, xticks=x)
        ax.legend(fontsize=8)
        text += [f"| round | selected | mean {column} selected | mean {column} ranked |", "|---|---|---|---|"]
        text += [f"| {r} | {sum(s['selected'] for s in sel)} | {_num(means[r][0])} | {_num(means[r][1])} |"
                 for r, sel in enumerate(f["rounds"])] + [""]
    for ax, (name, mix) in zip(axes, mixes.items(), strict=True):
        _stacked(ax, mix, f"{name} mix: pool and each round's selection")
    _save(fig, figures / "selection.png")
    text.append(f"![selection]({FIGURES_DIR}/selection.png)")
    for name, mix in mixes.items():
        text += ["", f"{name} mix (% of rows): " + "; ".join(
            f"{bar}: " + ", ".join(f"{k} {100 * v:.0f}" for k, v in shares.items()) for bar, shares in mix.items())]
    return "\n".join(text + ([""] + quotas if quotas else []))


def quota_lines(f: dict) -> list[str]:
    """The mixture quotas of each round (selection.quota_field): cap, pool rows, rows selected."""
    field = (f["config"].get("selection") or {}).get("quota_field")
    rounds = [(r, f["stages"].get(f"select-{r}", {}).get("quotas")) for r in range(len(f["rounds"]))]
    if not field or not any(q for _, q in rounds):
        return []
    lines = [f"Mixture quotas on `{field}` (cap: the most the round's selection may take):", "",
             "| round | value | cap | pool rows | selected |", "|---|---|---|---|---|"]
    for r, quotas in rounds:
        lines += [f"| {r} | {value or '(none)'} | {q['cap']} | {q['pool']} | {q['selected']} |"
                  for value, q in (quotas or {}).items()]
    return lines


def mix_by_round(f: dict) -> dict[str, dict[str, dict[str, float]]]:
    """{"domain" | "pseudo-domain": {"pool" | "round R": {label: share}}}: the data's own domain
    field when it has one, DaaR's pseudo-domains when the run has them."""
    out = {}
    valid = [r["id"] for r in f["rows"] if r["status"] == "valid"]
    if f["domain"]:
        out["domain"] = {"pool": _shares(f["domain"][i] for i in valid)}
        for r, sel in enumerate(f["rounds"]):
            out["domain"][f"round {r}"] = _shares(f["domain"][s["id"]] for s in sel if s["selected"])
    if f["rounds"] and "pseudo_domain" in f["rounds"][0][0]:
        out["pseudo-domain"] = {"pool": _shares(s["pseudo_domain"] for s in f["rounds"][0] if s["pseudo_domain"])}
        for r, sel in enumerate(f["rounds"]):
            out["pseudo-domain"][f"round {r}"] = _shares(s["pseudo_domain"] for s in sel if s["selected"])
    return out


def training_section(f: dict, figures: Path) -> str:
    train = [(int(name.split("-")[1]), st) for name, st in f["stages"].items()
             if name.startswith("train-") and st.get("status") != "running"]
    if not train:
        return "## Training\n\nNo round has finished training."
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 3.6))
    table = ["| round | rows | steps | mean loss | last loss | seconds |", "|---|---|---|---|---|---|"]
    for r, st in sorted(train):
        losses = st.get("losses") or []
        first = st.get("start_global_step", 0)
        if losses:
            ax.plot(np.arange(first + 1, first + 1 + len(losses)), losses, ".-", label=f"round {r}")
        else:  # runs from before per-step losses were kept
            ax.plot([st.get("global_step", r)], [st["mean_loss"]], "o", label=f"round {r} (mean)")
        table.append(f"| {r} | {st.get('rows')} | {st.get('steps')} | {_num(st.get('mean_loss'))} | "
                     f"{_num(st.get('final_loss'))} | {st.get('seconds', 0):.0f} |")
    ax.set(title="training loss per optimizer step", xlabel="optimizer step (whole run)", ylabel="answer-token loss")
    ax.legend(fontsize=8)
    _save(fig, figures / "training.png")
    return "\n".join(["## Training", "", *table, "", f"![training]({FIGURES_DIR}/training.png)"])


def eval_section(f: dict, figures: Path) -> str:
    ev = f["eval"]
    if not ev:
        return "## Held-out evaluation\n\nNot evaluated (set `eval.heldout`, or run `raysel eval`)."
    plt = _pyplot()

    domains = [d for d, v in ev["by_domain"].items() if v["loss"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bars = ax.bar(domains, [ev["by_domain"][d]["loss"] for d in domains], color="tab:blue")
    for bar, d in zip(bars, domains, strict=True):
        acc = ev["by_domain"][d]["accuracy"]
        if acc is not None:
            ax.annotate(f"accuracy {acc:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.set(title=f"held-out answer loss (mean over domains {_num(ev['mean_loss'])})", ylabel="answer-token loss")
    _save(fig, figures / "eval.png")
    table = ["| domain | rows | scored | loss | accuracy |", "|---|---|---|---|---|"]
    table += [f"| {d} | {v['rows']} | {v['scored']} | {_num(v['loss'])} | {_accuracy(v)} |"
              for d, v in ev["by_domain"].items()]
    return "\n".join(["## Held-out evaluation", "", f"Model `{ev['model']}`; per row: `eval.parquet`.", "",
                      *table, "", f"![eval]({FIGURES_DIR}/eval.png)"])


def timings_section(f: dict, figures: Path) -> str:
    stages = [(name, st) for name, st in f["stages"].items() if "seconds" in st]
    if not stages:
        return ""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(stages) + 1.2))
    names = [n + (" (reused)" if "reused_from" in st else "") for n, st in stages]
    ax.barh(names[::-1], [st["seconds"] for _, st in stages][::-1], color="tab:green")
    ax.set(title=f"stage wall time (total {sum(st['seconds'] for _, st in stages):.0f} s)", xlabel="seconds")
    _save(fig, figures / "timings.png")
    table = ["| stage | seconds |", "|---|---|"] + [f"| {n} | {st['seconds']:.1f} |" for n, st in stages]
    return "\n".join(["## Stage timings", "", *table, "", f"![timings]({FIGURES_DIR}/timings.png)"])


# --- small helpers -----------------------------------------------------------------------------------

def _finite(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x)


def _means(sel: list[dict], column: str) -> tuple[float | None, float | None]:
    ranked = [s[column] for s in sel if _finite(s.get(column))]
    picked = [s[column] for s in sel if s["selected"] and _finite(s.get(column))]
    return (float(np.mean(picked)) if picked else None), (float(np.mean(ranked)) if ranked else None)


def _shares(labels) -> dict[str, float]:
    counts = Counter(labels)
    total = sum(counts.values())
    return {k: counts[k] / total for k in sorted(counts)} if total else {}


def _stacked(ax, mix: dict[str, dict[str, float]], title: str) -> None:
    labels = sorted({k for shares in mix.values() for k in shares})
    bottom = np.zeros(len(mix))
    for label in labels:
        share = np.array([100 * shares.get(label, 0.0) for shares in mix.values()])
        ax.bar(list(mix), share, bottom=bottom, label=label)
        bottom += share
    ax.set(title=title, ylabel="% of rows", ylim=(0, 100))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))


def _accuracy(v: dict) -> str:
    return "-" if v["accuracy"] is None else f"{v['accuracy']:.1%} of {v['checked']}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
