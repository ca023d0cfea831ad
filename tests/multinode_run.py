"""Run by tests/test_multinode.py in a process of its own (a Ray driver can join one cluster only):
raysel's scoring and training on Ray's multi-node test cluster (ray.cluster_utils.Cluster: a head
and two worker nodes, each a raylet of its own with one CPU), then a node joining while a second
scoring pass runs. Prints one JSON line: which node did what, and the results.

    python tests/multinode_run.py MODEL_DIR ROWS BIG_ROWS TRAIN_ROWS OUT
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from raysel.config import Config, ModelConfig, ScoringConfig
from raysel.scoring import read_scores, score_pool

ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def scoring_config(num_actors: int, max_actors: int = 0, batch_size: int = 4) -> Config:
    return Config(model=ModelConfig(max_length=128),
                  scoring=ScoringConfig(dtype="float32", batch_size=batch_size, num_actors=num_actors,
                                        max_actors=max_actors, cpus_per_actor=1))


def score(model_dir: str, rows: str, out: Path, cfg: Config) -> dict:
    summary = score_pool(rows, out, model_dir, cfg)
    table = read_scores(out).to_pylist()
    # the nodes and the actors (pids) that scored rows, as the stage counts them from its batches
    return {"summary": {k: summary[k] for k in ("scored", "invalid", "actors_used")},
            "nodes": summary["nodes_used"], "actors": summary["actors_used"],
            "ifd": {r["id"]: r["ifd"] for r in table}}


def train(model_dir: str, rows: str, out: Path) -> dict:
    from raysel.training import total_steps, train_round

    cfg = training_config()
    ids = [f"row-{i:02d}" for i in range(0, 14, 2)]
    metrics = train_round(cfg, rows, ids, out, 0, model_dir, total_steps(len(ids), 1, cfg.training))
    return {k: metrics[k] for k in ("steps", "losses", "worker_nodes", "checkpoint")}


def training_config() -> Config:
    """Two workers, LoRA, ZeRO-2 (tests/test_multinode.py trains the same on one node)."""
    cfg = Config()
    cfg.model.max_length = 64
    cfg.run.seed = 7
    for k, v in dict(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=5e-3, batch_size=2,
                     num_workers=2, cpus_per_worker=1, zero_stage=2, use_gpu="no", precision="fp32",
                     log_every=1).items():
        setattr(cfg.training, k, v)
    return cfg


def score_while_a_node_joins(cluster: Cluster, model_dir: str, rows: str, out: Path) -> dict:
    """Three actors fill the three nodes; a fourth node joins once they work, and the autoscaling
    pool (up to four actors) starts one there. The pass runs in a thread: a node is added from
    the main thread only (its raylet's start-up sets signal handlers)."""
    result = {}

    def run():
        result.update(score(model_dir, rows, out, scoring_config(num_actors=3, max_actors=4, batch_size=1)))

    thread = threading.Thread(target=run, daemon=True)
    started = time.time()
    thread.start()
    time.sleep(15)  # the three actors have loaded the model and are scoring
    new_node = cluster.add_node(num_cpus=1).node_id
    joined_after = time.time() - started
    thread.join()
    assert result, "the scoring pass failed (see its log above)"
    return {**result, "new_node": new_node, "joined_after_s": round(joined_after, 1),
            "took_s": round(time.time() - started, 1)}


def main(model_dir: str, rows: str, big_rows: str, train_rows: str, out: str) -> None:
    out = Path(out)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, runtime_env={"env_vars": ENV}, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Dispatch only once every starting actor has loaded the model: on 30 rows the first one
    # ready would otherwise take every block before the last one could, and the check is where
    # the actors run, not how fast each loads.
    context.wait_for_min_actors_s = 300
    report = {"nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])}
    try:
        report["scoring"] = score(model_dir, rows, out / "scores", scoring_config(num_actors=3))
        report["training"] = train(model_dir, train_rows, out / "train")
        report["joining"] = score_while_a_node_joins(cluster, model_dir, big_rows, out / "scores-joining")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:6])
