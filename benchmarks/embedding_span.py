"""What `scoring.embedding_span` changes in the embedding greedy, on the demo pool and model.

    python benchmarks/embedding_span.py              # the demo's 500 rows, SmolLM2-135M-Instruct
    python benchmarks/embedding_span.py --rows 200 --k 40

Scores the demo rows once per span with the Ray Data scoring stage: `response` (the default:
the mean over the answer tokens) and `text` (the mean over the whole conditioned text, system
prompt included: raysel's embedding before it had the option). Then, for each span, in the same run:
- how crowded the embeddings are: the mean cosine of all pairs of rows, and of each planted
  (near) duplicate with the row it copies (the demo pool knows which those are);
- the IterIT embedding greedy (IFD x (1 - max cosine)) at budget k, and the same with
  de-duplication at cosine 0.98: how many planted duplicates each selects, and how much the two
  spans' selections overlap.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPANS = ("response", "text")
DEDUP = 0.98


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=500, help="demo-pool rows to score (the demo's slice)")
    p.add_argument("--k", type=int, default=50, help="selection budget")
    p.add_argument("--model", default="demo")
    return p.parse_args()


def score(rows_path: Path, out: Path, model: str, span: str) -> tuple[dict, np.ndarray, dict]:
    """(summary, unit-norm embeddings by id order, {id: ifd}) of one scoring pass."""
    import pyarrow.parquet as pq

    from raysel.config import Config, ModelConfig, ScoringConfig
    from raysel.scoring import read_embeddings, score_pool

    cfg = Config(model=ModelConfig(path=model, max_length=256), scoring=ScoringConfig(embedding_span=span))
    started = time.perf_counter()
    summary = score_pool(rows_path, out, model, cfg)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    ids, vectors = read_embeddings(out)
    vectors = vectors.astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = pq.read_table(out / "scores.parquet", columns=["id", "ifd"]).to_pylist()
    return {"ids": ids, **summary}, vectors, {r["id"]: r["ifd"] for r in scores}


def crowding(ids: np.ndarray, vectors: np.ndarray, source: dict[str, str]) -> dict:
    """Mean cosine of all pairs, and of each (near) duplicate with its original."""
    sims = vectors @ vectors.T
    n = len(ids)
    all_pairs = float((sims.sum() - np.trace(sims)) / (n * (n - 1)))
    at = {i: j for j, i in enumerate(ids)}
    pairs = [(at[d], at[o]) for d, o in source.items() if d in at and o in at]
    dup = float(np.mean([sims[a, b] for a, b in pairs])) if pairs else float("nan")
    return {"mean_cosine_all_pairs": round(all_pairs, 4), "mean_cosine_duplicate_pairs": round(dup, 4),
            "duplicate_pairs": len(pairs)}


def greedy(ids: np.ndarray, vectors: np.ndarray, ifd: dict, k: int, dedup: float | None) -> list[str]:
    from raysel.selection import select

    values = np.array([ifd[i] for i in ids], dtype=np.float64)
    sel = select("embedding", values, k, ids=ids, embeddings=vectors, dedup_threshold=dedup)
    return [str(ids[i]) for i in sel.selected]


def main() -> None:
    import ray

    from raysel.config import PoolConfig
    from raysel.demo.pool import DEFAULT_N, DEFAULT_SEED, build_pool, ensure_demo_pool
    from raysel.pool import ingest

    args = parse_args()
    build = build_pool(DEFAULT_N, DEFAULT_SEED)  # the cached demo pool's rows, with their defects
    defect = {r["id"]: r["defect"] for r in build.rows}
    source = {d: o for d, o in build.source.items() if defect[d] in ("duplicate", "near_duplicate")}
    figures: dict = {"rows": args.rows, "k": args.k, "dedup_threshold": DEDUP}
    ray.init(include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    picks = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows_path = Path(tmp) / "rows.parquet"
            ingest(PoolConfig(path=str(ensure_demo_pool()), limit=args.rows), rows_path)
            for span in SPANS:
                summary, vectors, ifd = score(rows_path, Path(tmp) / span, args.model, span)
                ids = summary["ids"]
                out = {"score_seconds": summary["seconds"], **crowding(ids, vectors, source)}
                for name, threshold in (("greedy", None), ("greedy_dedup", DEDUP)):
                    chosen = greedy(ids, vectors, ifd, args.k, threshold)
                    picks[(span, name)] = chosen
                    out[f"{name}_selected_duplicates"] = sum(defect[i] in ("duplicate", "near_duplicate")
                                                             for i in chosen)
                figures[span] = out
                print(f"{span:8s}: mean cosine {out['mean_cosine_all_pairs']:.3f} over all pairs, "
                      f"{out['mean_cosine_duplicate_pairs']:.3f} over {out['duplicate_pairs']} (near) duplicate "
                      f"pairs; (near) duplicates selected: {out['greedy_selected_duplicates']} of {args.k}, "
                      f"{out['greedy_dedup_selected_duplicates']} with dedup {DEDUP}", flush=True)
    finally:
        ray.shutdown()
    for name in ("greedy", "greedy_dedup"):
        shared = len(set(picks[("response", name)]) & set(picks[("text", name)]))
        figures[f"{name}_overlap"] = shared / args.k
        print(f"{name}: the spans' selections share {shared} of {args.k} rows", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
