"""How well DaaR's pseudo-domains match the demo pool's true domains, and what DaaR selected.

    python jobs/daar.py --run-dir runs/daar-demo          # first: a DaaR run on the demo pool
    python benchmarks/daar_domains.py runs/daar-demo [--round 0]

The demo pool's rows carry their true `domain` (and `defect`); DaaR never reads them. From the
run directory this prints, for round R: the agreement with the true domain of the probe rows'
k-means labels (in the input-embedding space and in the probe space, both recomputed from
probe.parquet, plus nearest-centroid labels without k-means), of the domain head's pseudo-domain
over the whole pool, the pseudo-domain and true-domain mix of the pool against the selection,
and the share of defective rows selected against the pool's. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--round", type=int, default=0)
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from raysel.config import load_config
    from raysel.daar.domains import centroids, normalise, pseudo_labels
    from raysel.daar.stage import read_probe, vector_matrix
    from raysel.runs import RunDir

    run, r = RunDir(args.run_dir), args.round
    cfg = load_config(run.path / "config.yaml")
    rows = pq.read_table(run.rows, columns=["id", "raw"]).to_pylist()
    truth = {row["id"]: json.loads(row["raw"]) for row in rows}
    names = json.loads((run.markers / f"heads-{r}.json").read_text())["domains"]
    out: dict = {"run": str(run.path), "round": r, "centroid_space_used": cfg.daar.centroid_space}

    probe = read_probe(run.probe(r))
    seed_domain = np.asarray(probe["seed_domain"].to_pylist(), dtype=object)
    is_seed = np.array([x is not None for x in seed_domain], dtype=bool)
    probe_truth = np.asarray([truth[i]["domain"] for i in np.asarray(probe["id"].to_pylist())[~is_seed]])
    labels_of = np.asarray(names, dtype=object)
    for space, column in (("input", "input_embedding"), ("probe", "probe")):
        x = vector_matrix(probe[column])
        c = centroids(x[is_seed], seed_domain[is_seed].tolist(), names)
        kmeans = labels_of[pseudo_labels(x[~is_seed], c, cfg.daar.kmeans_iterations, cfg.run.seed)]
        nearest = labels_of[(normalise(x[~is_seed]) @ c.T).argmax(1)]
        out[f"kmeans_agreement_{space}"] = round(float((kmeans == probe_truth).mean()), 4)
        out[f"nearest_centroid_agreement_{space}"] = round(float((nearest == probe_truth).mean()), 4)
        print(f"probe rows, {space} space: k-means labels agree with the true domain on "
              f"{out[f'kmeans_agreement_{space}']:.1%}, nearest centroid on {out[f'nearest_centroid_agreement_{space}']:.1%}")

    sel = pq.read_table(run.selection(r), columns=["id", "pseudo_domain", "reward", "selected"]).to_pylist()
    scored = [s for s in sel if s["pseudo_domain"] is not None]
    chosen = [s for s in scored if s["selected"]]
    head_agree = np.mean([s["pseudo_domain"] == truth[s["id"]]["domain"] for s in scored])
    out["domain_head_agreement_pool"] = round(float(head_agree), 4)
    print(f"domain head over the pool ({len(scored)} rows): agrees with the true domain on {head_agree:.1%}")
    for what, subset in (("pool", scored), ("selection", chosen)):
        pseudo = Counter(s["pseudo_domain"] for s in subset)
        true = Counter(truth[s["id"]]["domain"] for s in subset)
        defect = Counter(truth[s["id"]].get("defect", "none") for s in subset)
        out[f"{what}_pseudo_domain_mix"] = {d: round(pseudo[d] / len(subset), 4) for d in names}
        out[f"{what}_true_domain_mix"] = {d: round(true[d] / len(subset), 4) for d in sorted(true)}
        out[f"{what}_defect_share"] = round(1 - defect["none"] / len(subset), 4)
        out[f"{what}_defects"] = dict(defect)
        print(f"{what} ({len(subset)} rows): pseudo-domains {_pct(pseudo, len(subset))}; true domains "
              f"{_pct(true, len(subset))}; defective {out[f'{what}_defect_share']:.1%} {dict(defect)}")
    print(json.dumps(out))


def _pct(counter: Counter, n: int) -> str:
    return ", ".join(f"{k} {v / n:.0%}" for k, v in counter.most_common())


if __name__ == "__main__":
    main()
