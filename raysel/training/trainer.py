"""Fine-tune between rounds: one Ray Train TorchTrainer run per round, DeepSpeed in the workers.

    metrics = train_round(cfg, run / "rows.parquet", selected_ids, run, round_idx=r,
                          base_model=cfg.model.path, total_steps=total_steps(k, rounds, cfg.training))

Round r continues from round r-1's DeepSpeed state (weights, optimizer, LR schedule, step),
stored by Ray Train under <run>/train/round-<r-1>/final/, and exports <run>/round-<r>/checkpoint/:
a folder that plain transformers/peft (and raysel.models.load_model) load.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from raysel.config import Config
from raysel.runs import RunDir, atomic_output, timed
from raysel.training.data import check_selected, worker_datasets
from raysel.training.plan import assign_slots, batch_shape, steps_per_round, warmup_steps
from raysel.training.worker import train_loop

log = logging.getLogger(__name__)

def train_round(cfg: Config, rows_path: str | Path, selected_ids: list[str], run_path: str | Path,
                round_idx: int, base_model: str, total_steps: int) -> dict:
    """Train one round on the selected valid rows; returns its metrics.

    `base_model` is the run's base model (every round builds it afresh, then loads the previous
    round's state); `total_steps` spans the whole run (see plan.total_steps).
    """
    from raysel.models import resolve_model_path

    if not selected_ids:
        raise ValueError(f"round {round_idx}: no rows selected to train on")
    run = RunDir(Path(run_path).resolve())
    resume_from = _previous_state(run, round_idx)
    base_model = resolve_model_path(base_model)
    rows_path = _absolute(rows_path)
    check_selected(rows_path, selected_ids)
    with timed() as seconds:
        slots = assign_slots(list(selected_ids), batch_shape(cfg.training), cfg.training.epochs, cfg.run.seed,
                             round_idx)
        datasets = worker_datasets(rows_path, slots, cfg.training.num_workers, base_model,
                                   cfg.model.max_length, cfg.model.trust_remote_code)
        loop_config = _loop_config(cfg, base_model, round_idx, total_steps, resume_from)
        result = _fit(cfg.training, loop_config, datasets, run, round_idx)
        _copy_export(result.checkpoint, run.checkpoint(round_idx))
    metrics = {**result.metrics, "rows": len(slots), "seconds": seconds(),
               "checkpoint": str(run.checkpoint(round_idx))}
    _check_steps(metrics, steps_per_round(len(slots), cfg.training), total_steps)
    log.info("round %d trained: %d steps (global %d/%d), mean loss %.4f, last %.4f, lr %.3g, %.1fs", round_idx,
             metrics["steps"], metrics["global_step"], total_steps, metrics["mean_loss"], metrics["final_loss"],
             metrics["lr"], metrics["seconds"])
    return metrics


def _fit(tcfg, loop_config: dict, datasets: list, run: RunDir, round_idx: int):
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # A re-run of a round starts it afresh: Ray Train would otherwise resume this round's own run.
    shutil.rmtree(run.train_state(round_idx).parent, ignore_errors=True)
    use_gpu = loop_config["use_gpu"]
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=tcfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker(tcfg, use_gpu)}),
        run_config=RunConfig(name=f"round-{round_idx}", storage_path=str(run.train_storage()),
                             failure_config=FailureConfig(max_failures=tcfg.max_failures)),
        datasets={f"train_{w}": ds for w, ds in enumerate(datasets)},
        dataset_config=DataConfig(datasets_to_split=[]),  # each worker reads its own, in slot order
    )
    return trainer.fit()


def _check_steps(metrics: dict, expected: int, total_steps: int) -> None:
    if metrics["steps"] != expected:
        raise RuntimeError(f"round {metrics['round']} made {metrics['steps']} optimizer steps, expected {expected}")
    if metrics["global_step"] > total_steps:
        log.warning("global step %d is past total_steps=%d: the LR schedule ended, later steps train at LR 0",
                    metrics["global_step"], total_steps)


def _absolute(path: str | Path) -> str:
    """Ray tasks may run elsewhere than the driver's working directory."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def resolve_use_gpu(use_gpu: str) -> bool:
    """training.use_gpu: "yes", "no", or "auto" (GPUs in the Ray cluster)."""
    if use_gpu != "auto":
        return use_gpu == "yes"
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def cpus_per_worker(training_cfg, use_gpu: bool) -> int:
    """CPU training: the cluster's CPUs split among the workers (Ray sets each worker's torch
    threads to its CPUs); nothing else runs meanwhile, the rows being tokenised beforehand.
    GPU training: 0, Ray's default (a GPU, no CPU)."""
    if training_cfg.cpus_per_worker or use_gpu:
        return training_cfg.cpus_per_worker
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)) // training_cfg.num_workers)


def _previous_state(run: RunDir, round_idx: int) -> str | None:
    if round_idx == 0:
        return None
    previous = run.train_state(round_idx - 1)
    if not (previous / "deepspeed").is_dir():
        raise FileNotFoundError(f"round {round_idx} continues from round {round_idx - 1}'s training state, "
                                f"which is not in {previous}: train round {round_idx - 1} first")
    return str(previous)


def _loop_config(cfg: Config, base_model: str, round_idx: int, total_steps: int, resume_from: str | None) -> dict:
    t = cfg.training
    use_gpu = resolve_use_gpu(t.use_gpu)
    return {
        "base_model": base_model, "trust_remote_code": cfg.model.trust_remote_code,
        "method": t.method, "lora_r": t.lora_r, "lora_alpha": t.lora_alpha, "lora_dropout": t.lora_dropout,
        "lora_target_modules": list(t.lora_target_modules), "merge_weights": t.merge_weights,
        "learning_rate": t.learning_rate, "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
        "total_steps": total_steps, "warmup_steps": warmup_steps(total_steps, t.warmup_ratio),
        "batch_size": t.batch_size, "grad_accum": t.gradient_accumulation,
        "zero_stage": t.zero_stage, "offload_optimizer": t.offload_optimizer, "precision": t.precision,
        "seed": cfg.run.seed, "round": round_idx, "resume_from": resume_from, "log_every": t.log_every,
        "use_gpu": use_gpu,
    }


def _copy_export(checkpoint, final: Path) -> None:
    """Copy the exported model out of the Ray Train checkpoint into round-R/checkpoint/, atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as d, atomic_output(final) as tmp:
        shutil.copytree(Path(d) / "export", tmp)
