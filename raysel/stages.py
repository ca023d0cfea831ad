"""Each stage once, behind its completion marker: the pieces the loops put in order.

A stage whose marker exists is skipped on --resume; its outputs were renamed into place
before the marker was written, so they are complete.
"""

from __future__ import annotations

import logging
import os

from raysel.config import Config
from raysel.runs import RunDir, timed

log = logging.getLogger(__name__)


def open_run(cfg: Config, job: str) -> RunDir:
    return RunDir.create(cfg, job)


def start_ray(cfg: Config):
    """Join the cluster this job was submitted to (or cfg.ray.address), else start a local one."""
    import ray

    if ray.is_initialized():
        return ray
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs = {} if address else {"num_cpus": cfg.ray.num_cpus, "include_dashboard": False}
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, **kwargs)
    log.info("ray cluster: %s", {k: v for k, v in ray.cluster_resources().items() if "node" not in k})
    return ray


def ingest_stage(run: RunDir, cfg: Config, force: bool = False) -> dict:
    """rows.parquet: every input record with a status. Returns the counts."""
    from raysel.pool import ingest, resolve_pool_path

    if run.is_done("ingest") and not force:
        return run.stats("ingest")
    run.forget("ingest")
    with timed() as t:
        fields = resolve_pool_path(cfg.pool)
        counts = ingest(fields, run.path / "rows.parquet")
    run.mark_done("ingest", t(), **counts)
    run.update_manifest(counts=counts)
    log.info("ingested %d records: %d valid, %d invalid %s", counts["records"], counts["valid"],
             counts["invalid"], counts["invalid_by_reason"])
    return counts
