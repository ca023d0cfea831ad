"""Domains: seeds per domain, their centroids, and pseudo-labels by k-means from those centroids.

    seeds = read_seeds("seeds.jsonl")                 # [{domain, instruction, input, output}, ...]
    centers = centroids(vectors, [s["domain"] for s in seeds], names)
    labels = pseudo_labels(probe_vectors, centers)     # index into names, per probe row

Vectors are L2-normalised before averaging and clustering: a mean of token embeddings shrinks
with the text's length, and clusters must follow what a text is about, not how long it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from raysel.config import UserError

log = logging.getLogger(__name__)

SEED_FIELDS = ("domain", "instruction", "input", "output")
DEMO_SEEDS = Path(__file__).resolve().parent.parent / "demo" / "seeds.jsonl"


def read_seeds(path: str | Path) -> list[dict]:
    """The seeds file: JSON lines with domain, instruction, optional input, output."""
    path = DEMO_SEEDS if str(path) == "demo" else Path(path)
    if not path.exists():
        raise UserError(f"daar.seeds_path: {path} does not exist (a JSONL file of domain, instruction, "
                        "input, output; or set daar.seed_source=synthesize)")
    seeds = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {n}: not JSON ({e.msg})") from None
        bad = [f for f in SEED_FIELDS if not isinstance(record.get(f, "" if f == "input" else None), str)]
        if not isinstance(record, dict) or bad or not record["domain"].strip() or not record["output"].strip():
            raise UserError(f"{path}, line {n}: a seed needs string fields domain, instruction, output "
                            f"(and optionally input); got {line[:120]!r}")
        seeds.append({"domain": record["domain"], "instruction": record["instruction"],
                      "input": record.get("input") or "", "output": record["output"]})
    if not seeds:
        raise UserError(f"{path}: no seeds")
    return seeds


def domain_name(item: str) -> str:
    """The name in a daar.domains entry: "math: word problems" -> "math"."""
    return item.split(":", 1)[0].strip()


def domain_names(seeds: list[dict], wanted: list[str]) -> list[str]:
    """The domains to cluster into: `wanted` (daar.domains, names before any ': description'),
    or every domain of the seeds in order of first appearance. Each needs at least one seed."""
    present = list(dict.fromkeys(s["domain"] for s in seeds))
    names = [domain_name(w) for w in wanted] or present
    missing = [n for n in names if n not in present]
    if missing:
        raise UserError(f"daar.domains: no seeds for {missing}; the seeds have {present}")
    if len(names) < 2:
        raise UserError(f"DaaR needs at least two domains, got {names}")
    return names


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def centroids(vectors: np.ndarray, domains: list[str], names: list[str]) -> np.ndarray:
    """[D, d]: the mean of each domain's (normalised) seed vectors, in the order of `names`."""
    vectors, domains = normalise(vectors), np.asarray(domains, dtype=object)
    return np.stack([vectors[domains == name].mean(axis=0) for name in names]).astype(np.float32)


def pseudo_labels(vectors: np.ndarray, centers: np.ndarray, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """int64 [n]: k-means with one cluster per domain, started at the domain centroids (one
    init), so cluster i stays domain i; each row's final cluster is its pseudo-label."""
    import faiss

    x = normalise(vectors)
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    k, d = centers.shape
    if len(x) < k:
        raise UserError(f"the probe set has {len(x)} rows, fewer than its {k} domains")
    # faiss subsamples past max_points_per_centroid * k rows: keep every row (a probe set is small)
    kmeans = faiss.Kmeans(d, k, niter=iterations, seed=seed, max_points_per_centroid=max(256, len(x)),
                          verbose=False)
    kmeans.train(x, init_centroids=centers)
    _, labels = kmeans.index.search(x, 1)
    return labels[:, 0].astype(np.int64)
