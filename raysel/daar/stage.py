"""DaaR's stages, each once behind its marker (RunDir.stage); the DaaR loop puts them in order.

    seeds      seeds.jsonl                the domain seeds (a file, or synthesised by the model)
    probe-R    round-R/probe.parquet/     features of the seeds and of a probe set drawn from the pool
    heads-R    round-R/heads.safetensors  centroids -> k-means pseudo-labels -> domain and reward heads
               round-R/probe_labels.parquet
    reward-R   round-R/scores.parquet     every valid row: reward (predicted), entropy, pseudo_domain

The model passes (probe, reward) run on the shared Ray Data actor map; each actor loads the
model's first daar.probe_layers layers only. The driver holds ids and scores, nothing wider: the
probe actors write their features as the parts of the folder probe.parquet, and the heads are
fitted by a Ray task that reads it.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pyarrow as pa

from raysel.actor_map import map_to_table
from raysel.config import Config
from raysel.runs import RunDir, atomic_output, fresh_folder, write_parquet, write_part

log = logging.getLogger(__name__)

TEXT_COLUMNS = ["id", "prompt", "input", "response"]
PROBE_COLUMNS = [*TEXT_COLUMNS, "seed_domain"]  # a seed's domain; null for a pool row
REWARD_SCHEMA = pa.schema([("id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                           ("reward", pa.float64()), ("entropy", pa.float64()), ("pseudo_domain", pa.string())])


# --- the actors -------------------------------------------------------------------------------

class ProbeFeaturizer:
    """What `map_batches` calls: rows (id, prompt, input, response, seed_domain) in; their probe
    features and input-embedding means written as a part of the folder `out_dir`; their ids out."""

    def __init__(self, model_path: str, cfg: Config, threads: int, device: str, out_dir: str | None = None):
        from raysel.daar.features import ProbeEncoder
        from raysel.scoring.stage import default_tokens_per_forward, load_for_inference

        model, tokenizer, dtype = load_for_inference(model_path, cfg, threads, device)
        budget = cfg.scoring.tokens_per_forward or default_tokens_per_forward(device, dtype)
        self.encoder = ProbeEncoder(model, tokenizer, cfg.daar.probe_layers, cfg.model.max_length,
                                    budget)
        self.out_dir = out_dir
        log.info("DaaR featurizer ready: %s, first %d layers, on %s, %s", model_path, cfg.daar.probe_layers,
                 device, dtype)

    def features(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        from raysel.daar.features import render_text
        from raysel.pool import instruction_and_input

        texts = [render_text(*instruction_and_input(p, i), r) for p, i, r in zip(
            batch["prompt"].to_pylist(), batch["input"].to_pylist(), batch["response"].to_pylist(), strict=True)]
        return self.encoder.encode(texts)

    def __call__(self, batch: pa.Table) -> pa.Table:
        probe, inputs = self.features(batch)
        write_part(pa.table({"id": batch["id"], "seed_domain": batch["seed_domain"].cast(pa.string()),
                             "probe": _vectors(probe), "input_embedding": _vectors(inputs)}), self.out_dir)
        return batch.select(["id"])


class RewardScorer(ProbeFeaturizer):
    """Rows in, the heads' verdict out: predicted reward, the domain head's entropy and argmax."""

    def __init__(self, model_path: str, cfg: Config, threads: int, device: str, heads_path: str,
                 domains: list[str]):
        from raysel.daar.heads import load_heads

        super().__init__(model_path, cfg, threads, device)
        self.heads, self.domains = load_heads(heads_path), np.asarray(domains, dtype=object)

    def __call__(self, batch: pa.Table) -> pa.Table:
        probe, _ = self.features(batch)
        verdict = self.heads.score(probe)
        n = batch.num_rows
        return pa.table({
            "id": batch["id"], "status": ["scored"] * n, "reason": pa.nulls(n, pa.string()),
            "reward": verdict["reward"].astype(np.float64), "entropy": verdict["entropy"].astype(np.float64),
            "pseudo_domain": self.domains[verdict["domain"]].tolist(),
            "scored_by": [os.getpid()] * n,
        })


def _vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1])


def vector_matrix(column) -> np.ndarray:
    """A fixed-size-list column (a probe.parquet vector column) as a float32 matrix."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def read_probe(path) -> pa.Table:
    """A round's probe.parquet (a folder of parts; one file in older runs) as one table sorted by id."""
    import pyarrow.parquet as pq

    return pq.read_table(path).sort_by("id")


def _map(rows_path, actor_cls, ctor: dict, cfg: Config, columns=TEXT_COLUMNS) -> tuple[pa.Table | None, dict]:
    """`actor_cls` over the valid rows on the actor map; the outputs sorted by id."""
    table, counts, plan = map_to_table(rows_path, actor_cls, ctor, cfg, columns)
    return (table.sort_by("id") if table is not None else None), {**counts, "actors": plan.num_actors,
                                                                   "device": plan.device}


# --- the stages -------------------------------------------------------------------------------

def seeds_stage(run: RunDir, cfg: Config, base_model: str) -> list[dict]:
    """seeds.jsonl: the run's domain seeds, copied from daar.seeds_path or synthesised by the base
    model, so that the run directory alone reproduces the centroids."""
    from raysel.daar.domains import domain_names, read_seeds

    d = cfg.daar

    def compute():
        if d.seed_source == "file":
            seeds = read_seeds(d.seeds_path)
            stats = {"source": str(d.seeds_path)}
        else:
            seeds, stats = _synthesize(cfg, base_model)
        names = domain_names(seeds, d.domains)
        seeds = [s for s in seeds if s["domain"] in names]
        with atomic_output(run.seeds) as tmp:
            tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in seeds), encoding="utf-8")
        per_domain = {n: sum(s["domain"] == n for s in seeds) for n in names}
        return {**stats, "domains": names, "seeds_per_domain": per_domain}

    run.stage("seeds", compute)
    return [json.loads(line) for line in run.seeds.read_text(encoding="utf-8").splitlines()]


def _synthesize(cfg: Config, base_model: str) -> tuple[list[dict], dict]:
    from raysel.config import ConfigError
    from raysel.daar.synthesize import synthesize_seeds

    d = cfg.daar
    described = dict(item.split(":", 1) for item in d.domains if ":" in item)
    if len(described) != len(d.domains) or len(described) < 2:
        raise ConfigError("daar.domains: to synthesise seeds, name two or more domains as 'name: one-line "
                          f"description', e.g. ['math: arithmetic word problems', ...]; got {d.domains}")
    domains = {k.strip(): v.strip() for k, v in described.items()}
    seeds, stats = synthesize_seeds(base_model, domains, n_per_domain=d.seeds_per_domain,
                                    max_similarity=d.synth_max_similarity, max_attempts=d.synth_max_attempts,
                                    warmup=d.synth_warmup, seed=cfg.run.seed,
                                    trust_remote_code=cfg.model.trust_remote_code)
    return seeds, {"source": "synthesize", "synthesis": stats}


def probe_stage(run: RunDir, cfg: Config, r: int, model: str, seeds: list[dict]) -> dict:
    """round-R/probe.parquet/: probe features and input-embedding means of the seeds and of
    daar.probe_size valid rows drawn with the run's seed (the same rows every round), written by
    the actors as the parts of one folder."""
    import pyarrow.parquet as pq

    def compute():
        probe_ids = draw_probe(run.rows, cfg.daar.probe_size, cfg.run.seed)
        inputs = run.round_dir(r) / ".probe-input.parquet"
        write_parquet(_probe_input(run.rows, probe_ids, seeds), inputs)
        ctor = {"model_path": str(model), "out_dir": fresh_folder(run.probe(r).resolve())}
        try:
            mapped, counts = _map(inputs, ProbeFeaturizer, ctor, cfg, PROBE_COLUMNS)
        finally:
            inputs.unlink(missing_ok=True)
        written = pq.read_table(run.probe(r), columns=["id"])["id"]
        if sorted(written.to_pylist()) != mapped["id"].to_pylist():  # a lost or doubled part
            raise RuntimeError(f"{run.probe(r)} holds {len(written)} rows for the {mapped.num_rows} featurised")
        return {"model": str(model), "probe_rows": len(probe_ids), "seeds": len(seeds),
                "actors": counts["actors"], "device": counts["device"]}

    return run.stage(f"probe-{r}", compute)


def draw_probe(rows_path, size: int, seed: int) -> list[str]:
    """`size` valid ids drawn at random (all of them when there are fewer), sorted."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    keys = pq.read_table(rows_path, columns=["id", "status"])
    valid = np.sort(np.asarray(keys.filter(pc.equal(keys["status"], "valid"))["id"].to_pylist(), dtype=object))
    if len(valid) <= size:
        return valid.tolist()
    return np.sort(np.random.default_rng(seed).choice(valid, size, replace=False)).tolist()


def _probe_input(rows_path, probe_ids: list[str], seeds: list[dict]) -> pa.Table:
    """The rows the probe pass reads: the seeds (normalised like pool rows, with their domain) and
    the probe rows."""
    import pyarrow.parquet as pq

    from raysel.config import PoolConfig
    from raysel.pool import ROW_SCHEMA, normalise

    rows = pq.read_table(rows_path, columns=["id", "status", *TEXT_COLUMNS[1:]],
                         filters=[("id", "in", probe_ids)] if probe_ids else None)
    seed_rows = []
    for i, s in enumerate(seeds):
        norm = normalise(s, PoolConfig())
        seed_rows.append({"id": f"seed-{i:05d}", "status": "valid", "prompt": norm["prompt"],
                          "input": norm["input"], "response": norm["response"], "seed_domain": s["domain"]})
    schema = pa.schema([ROW_SCHEMA.field(c) for c in ["id", "status", *TEXT_COLUMNS[1:]]])
    schema = schema.append(pa.field("seed_domain", pa.string()))
    rows = rows.append_column("seed_domain", pa.nulls(rows.num_rows, pa.string()))
    return pa.concat_tables([pa.Table.from_pylist(seed_rows, schema=schema), rows.cast(schema)])


def heads_stage(run: RunDir, cfg: Config, r: int) -> dict:
    """round-R/heads.safetensors and probe_labels.parquet, fitted by a Ray task (fit_heads) so that
    the probe features are held by a worker, never by the driver."""
    import ray

    def compute():
        fit = ray.remote(num_cpus=1)(fit_heads)
        paths = [str(p.resolve()) for p in (run.probe(r), run.heads(r), run.probe_labels(r))]
        return ray.get(fit.remote(*paths, cfg))

    stats = run.stage(f"heads-{r}", compute)
    log.info("round %d heads: domain val accuracy %s, reward val MSE %s (predicting the mean: %s)", r,
             stats["domain_val_accuracy"], stats["reward_val_mse"], stats["reward_val_mse_of_mean"])
    return stats


def fit_heads(probe_path: str, heads_path: str, labels_path: str, cfg: Config) -> dict:
    """Centroids of the seeds, k-means pseudo-labels of the probe rows started at them, then the
    two heads trained on the labels; writes the heads and the labels, returns the stats."""
    from raysel.daar.domains import centroids, domain_names, pseudo_labels
    from raysel.daar.heads import HeadOptions, save_heads, train_heads

    d = cfg.daar
    table = read_probe(probe_path)
    seed_domain = np.asarray(table["seed_domain"].to_pylist(), dtype=object)
    is_seed = np.array([x is not None for x in seed_domain], dtype=bool)
    names = domain_names([{"domain": x} for x in seed_domain[is_seed]], d.domains)
    space = vector_matrix(table["input_embedding" if d.centroid_space == "input" else "probe"])
    centers = centroids(space[is_seed], seed_domain[is_seed].tolist(), names)
    labels = pseudo_labels(space[~is_seed], centers, d.kmeans_iterations, cfg.run.seed)
    opts = HeadOptions(d.head_epochs, d.head_batch_size, d.head_learning_rate, d.head_val_fraction)
    heads, stats = train_heads(vector_matrix(table["probe"])[~is_seed], labels, len(names), opts, cfg.run.seed)
    with atomic_output(heads_path) as tmp:
        save_heads(heads, tmp)
    ids = table["id"].filter(pa.array(~is_seed))
    write_parquet(pa.table({"id": ids, "pseudo_domain": np.asarray(names, dtype=object)[labels].tolist()}),
                  labels_path)
    counts = np.bincount(labels, minlength=len(names))
    return {"domains": names, "centroid_space": d.centroid_space,
            "probe_label_counts": dict(zip(names, counts.tolist(), strict=True)), **stats}


def reward_stage(run: RunDir, cfg: Config, r: int, model: str, domains: list[str]) -> dict:
    """round-R/scores.parquet: every valid row scored by round r's heads on its probe features."""

    def compute():
        ctor = {"model_path": str(model), "heads_path": str(run.heads(r).resolve()), "domains": domains}
        table, counts = _map(run.rows, RewardScorer, ctor, cfg)
        workers = len(set(table["scored_by"].to_pylist())) if table is not None else 0
        table = table.select(REWARD_SCHEMA.names).cast(REWARD_SCHEMA) if table is not None \
            else REWARD_SCHEMA.empty_table()
        write_parquet(table, run.scores(r))
        pseudo = table["pseudo_domain"].to_pylist()
        reward = table["reward"].to_numpy()
        return {"model": str(model), **counts, "scored": table.num_rows, "actors_used": workers,
                "pseudo_domains": {n: pseudo.count(n) for n in domains},
                "mean_reward": float(reward.mean()) if len(reward) else None}

    return run.stage(f"reward-{r}", compute)
