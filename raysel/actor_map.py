"""One Ray Data actor pool over the valid rows of rows.parquet: how every pass of a model over
the pool runs (the IFD scorer today; a feature extractor or a reward scorer tomorrow).

    plan = plan_actors(cfg.scoring, ray.cluster_resources())
    ds, counts = map_valid_rows(run.rows, Scorer, {...}, plan, ["id", "prompt", "response"], ids=None)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None): ...

The actor class is what `map_batches` calls: built once per actor (the model loads once), then
called on pyarrow batches of rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from raysel.config import ConfigError, ScoringConfig

log = logging.getLogger(__name__)

# CPU actors when the config leaves it open: at most MAX_AUTO_CPU_ACTORS model copies, the
# node's CPUs shared out as torch threads among them. On the 2-core box that is two actors of one
# thread: a multi-threaded op waits at a barrier for its slowest thread, and on a busy machine a
# descheduled thread stalls every op (2 threads scored 60-70 tokens/s under load where 1 thread
# scored 300-760); one single-threaded actor per core never waits on another.
MAX_AUTO_CPU_ACTORS = 8


@dataclass(frozen=True)
class ActorPlan:
    num_actors: int  # the pool's size when it starts
    num_cpus: float  # Ray resources per actor
    num_gpus: int
    threads: int  # torch threads per actor
    device: str  # "cuda" | "cpu"
    max_actors: int  # the most the pool grows to (num_actors: a fixed pool)


def plan_actors(scoring: ScoringConfig, resources: dict) -> ActorPlan:
    """One actor per GPU; without GPUs, CPU actors of a few threads each that fill the cluster.
    `resources` is the cluster as the stage starts: on an autoscaling cluster with no GPU node
    yet, scoring.use_gpu=yes plans GPU actors anyway, and max_actors lets the pool grow."""
    if min(scoring.num_actors, scoring.cpus_per_actor, scoring.max_actors) < 0:
        raise ConfigError("scoring.num_actors, cpus_per_actor and max_actors must be 0 (auto) or positive")
    cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
    if scoring.use_gpu == "yes" or (scoring.use_gpu == "auto" and gpus):
        n = scoring.num_actors or max(1, gpus)
        threads = scoring.cpus_per_actor or max(1, min(4, cpus // n))  # tokenisation, host-side work
        plan = ActorPlan(n, num_cpus=1, num_gpus=1, threads=threads, device="cuda",
                         max_actors=max(n, scoring.max_actors))
    else:
        n = scoring.num_actors or (max(1, cpus // scoring.cpus_per_actor) if scoring.cpus_per_actor
                                   else min(cpus, MAX_AUTO_CPU_ACTORS))
        threads = scoring.cpus_per_actor or max(1, cpus // n)
        if n * threads > cpus and not scoring.max_actors:
            raise ConfigError(f"scoring.num_actors={n} x cpus_per_actor={threads} needs {n * threads} CPUs, "
                              f"the cluster has {cpus}: lower one of them (0 picks automatically), or set "
                              "scoring.max_actors on an autoscaling cluster")
        plan = ActorPlan(n, num_cpus=threads, num_gpus=0, threads=threads, device="cpu",
                         max_actors=max(n, scoring.max_actors))
    if scoring.max_actors and scoring.max_actors < plan.num_actors:
        raise ConfigError(f"scoring.max_actors={scoring.max_actors} is below the pool's starting size "
                          f"{plan.num_actors} (scoring.num_actors, or one per GPU)")
    return plan


def _rows_to_map(rows_path: Path, ids: list[str] | None) -> tuple[pa.Array | None, dict]:
    """The ids to map (None: every valid row) and the counts of what is and is not mapped."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    keys = pads.dataset(str(rows_path), format="parquet").to_table(columns=["id", "status"])
    valid = keys.filter(pc.equal(keys["status"], "valid"))["id"]
    counts = {"rows": keys.num_rows, "excluded_at_ingestion": keys.num_rows - len(valid)}
    if ids is None:  # (the key is `to_score`: the scoring stage's stats had it first)
        return None, {**counts, "to_score": len(valid)}
    wanted = pa.array(sorted(set(ids)), pa.string())
    found = pc.is_in(wanted, value_set=valid)
    missing = len(wanted) - pc.sum(found).as_py() if len(wanted) else 0
    if missing:
        log.warning("%d of the %d ids asked for are not valid rows of %s; skipped", missing, len(wanted),
                    rows_path)
    wanted = wanted.filter(found)
    return wanted, {**counts, "requested": len(ids), "not_valid_or_unknown": missing, "to_score": len(wanted)}


def map_valid_rows(rows_path: str | Path, actor_cls, ctor_kwargs: dict, plan: ActorPlan, columns: list[str],
                   ids: list[str] | None = None, batch_size: int = 256):
    """(the Ray dataset of `actor_cls`'s outputs, or None when there is nothing to map; the counts).

    The valid rows of rows.parquet (or only `ids` among them), their `columns` only, go to a pool
    of `plan.num_actors` actors of `actor_cls(**ctor_kwargs)`, each called on pyarrow batches of
    about `batch_size` rows. Iterate the result with `iter_batches(batch_format="pyarrow")`."""
    import ray

    rows_path = Path(rows_path).resolve()
    wanted, counts = _rows_to_map(rows_path, ids)
    n_rows = counts["to_score"]
    if not n_rows:
        return None, counts
    ds = ray.data.read_parquet(str(rows_path)).select_columns(sorted({"id", "status", *columns}))
    ds = ds.map_batches(_keep_rows, fn_kwargs={"wanted": wanted, "columns": columns}, batch_format="pyarrow",
                        batch_size=None)
    # One block per Ray batch, and at least a few per actor: an actor that is ready first
    # must not take the whole of a small pool while the others are still loading the model.
    n_blocks = max(4 * plan.max_actors, -(-n_rows // batch_size))
    ds = ds.repartition(n_blocks)
    # Read before the actors start: actors that fill every CPU would leave no slot for the read
    # tasks, and the pipeline would wait forever. The text is small next to the model work.
    ds = ds.materialize()
    resources = {"num_gpus": plan.num_gpus} if plan.num_gpus else {"num_cpus": plan.num_cpus}
    return ds.map_batches(
        actor_cls,
        fn_constructor_kwargs=ctor_kwargs,
        batch_size=-(-n_rows // n_blocks),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=plan.num_actors, max_size=plan.max_actors,
                                           max_tasks_in_flight_per_actor=tasks_in_flight(plan)),
        **resources,
    ), counts


def tasks_in_flight(plan: ActorPlan) -> int:
    """Batches handed to each actor at once. One in a fixed pool: a batch takes seconds to
    minutes, so fetching the next costs nothing, and no actor holds a queue another could work
    on. In a pool that may grow, enough for Ray Data to grow it: it adds actors only once the
    tasks in flight per actor reach its actor_pool_util_upscaling_threshold (1.75 by default),
    which one per actor never does."""
    import math

    import ray

    if plan.max_actors == plan.num_actors:
        return 1
    threshold = ray.data.DataContext.get_current().autoscaling_config.actor_pool_util_upscaling_threshold
    return max(1, math.ceil(threshold))


def map_to_table(rows_path: str | Path, actor_cls, ctor_kwargs: dict, cfg, columns: list[str],
                 ids: list[str] | None = None, desc: str | None = None) -> tuple[pa.Table | None, dict, ActorPlan]:
    """`actor_cls` over the valid rows (or `ids`) on a pool planned from the cluster (cfg.scoring),
    each actor built with `ctor_kwargs` plus cfg, threads and device; its outputs gathered in one
    table (None when nothing was mapped), the counts and the plan. For outputs a driver can hold."""
    import ray

    plan = plan_actors(cfg.scoring, ray.cluster_resources())
    ctor = {**ctor_kwargs, "cfg": cfg, "threads": plan.threads, "device": plan.device}
    ds, counts = map_valid_rows(rows_path, actor_cls, ctor, plan, columns, ids=ids, batch_size=cfg.scoring.batch_size)
    log.info("%s over %d rows: %s", actor_cls.__name__, counts["to_score"], plan)
    parts = list(gathered(ds, counts["to_score"], desc or actor_cls.__name__))
    # batches may differ where a column is all null in one of them: unify the types
    return (pa.concat_tables(parts, promote_options="default") if parts else None), counts, plan


def gathered(ds, total: int, desc: str):
    """The pyarrow batches of a mapped dataset (None: nothing mapped) as they reach the driver,
    counted as progress (raysel.progress) against `total` rows."""
    from raysel.progress import Progress

    with Progress(total, desc, "rows", terminal_bar=False) as progress:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None) if ds is not None else []:
            progress.update(batch.num_rows)
            yield batch


def _keep_rows(batch: pa.Table, wanted: pa.Array | None, columns: list[str]) -> pa.Table:
    import pyarrow.compute as pc

    keep = pc.equal(batch["status"], "valid")
    if wanted is not None:
        keep = pc.and_(keep, pc.is_in(batch["id"], value_set=wanted))
    return batch.filter(keep).select(columns)
