"""What each Ray Train worker runs: build the model (LoRA or full), wrap it in DeepSpeed,
restore the previous round's state, train on its slots, then save the DeepSpeed state and
(rank 0) the exported model into the round's Ray Train checkpoint.

The checkpoint directory every worker reports (Ray Train merges them into one folder):

    deepspeed/state/...   engine.save_checkpoint: weights, optimizer, LR scheduler, step
    export/               rank 0: save_pretrained of the adapter or full weights + tokenizer
    export/merged/        rank 0, LoRA with training.merge_weights: base + adapter merged
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from raysel.runs import TRAIN_STATE_DIR
from raysel.training.plan import WarmupCosine, answer_loss, collate

log = logging.getLogger(__name__)

DS_TAG = "state"  # DeepSpeed checkpoint tag inside <checkpoint>/deepspeed/
EXTENSIONS_DIR = "~/.cache/raysel/torch_extensions"


def train_loop(config: dict) -> None:
    """The Ray Train worker function; `config` is built by raysel.training.trainer."""
    # DeepSpeed compiles some CPU ops on first use: cache them where every run finds them.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser(EXTENSIONS_DIR))
    _log_to_stderr()
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    config = {**config, "bf16": use_bf16(config["precision"], config["use_gpu"])}  # where it runs
    began = time.perf_counter()
    engine, tokenizer = _prepare_engine(config, world)
    log.info("worker %d/%d: DeepSpeed engine ready in %.1fs", rank, world, time.perf_counter() - began)
    start = {f"start_{k}": v for k, v in training_state(engine).items()}
    # Dropout masks: reproducible, and different on each rank and round.
    torch.manual_seed(config["seed"] * 100_003 + config["round"] * 1_009 + rank)
    batches = _load_shard(rank, config["batch_size"])
    log.info("worker %d/%d: %d micro-batches on %s (%d threads), starting at step %d", rank, world, len(batches),
             engine.device, torch.get_num_threads(), engine.global_steps)
    started = time.perf_counter()
    step_losses = _train(engine, batches, tokenizer.pad_token_id, config["log_every"], rank, config["round"])
    metrics = {
        "round": config["round"], **start, **training_state(engine),
        "steps": engine.global_steps - start["start_global_step"],
        "mean_loss": sum(step_losses) / max(1, len(step_losses)),
        "final_loss": step_losses[-1] if step_losses else float("nan"),
        "losses": [round(x, 5) for x in step_losses],  # per optimizer step: the report's loss curve
        "train_seconds": time.perf_counter() - started,
        "worker_nodes": worker_nodes(),  # Ray node id of each rank: where the round ran
    }
    started = time.perf_counter()
    _save_and_report(engine, tokenizer, config, metrics, rank)
    log.info("worker %d/%d: state saved and exported in %.1fs", rank, world, time.perf_counter() - started)


def use_bf16(precision: str, use_gpu: bool) -> bool:
    """"auto": bf16 on GPUs and on CPUs where it beats fp32 (AMX); fp32 on the rest."""
    from raysel.models import cpu_has_fast_bf16

    return precision == "bf16" or (precision == "auto" and (use_gpu or cpu_has_fast_bf16()))


def training_state(engine) -> dict:
    """Where training stands: the engine's step and LR, Adam's own step, the trainable weights' norm."""
    return {"global_step": engine.global_steps, "lr": engine.get_lr()[0],
            "optimizer_step": optimizer_step(engine), "weight_norm": trainable_norm(engine)}


def _log_to_stderr() -> None:
    """Show raysel's INFO lines in the worker's log (Ray gives the root logger a handler, not a level)."""
    logger = logging.getLogger("raysel")
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        logger.addHandler(logging.StreamHandler())


# --- model and engine ---------------------------------------------------------------------


def _build_model(config: dict):
    import torch

    from raysel.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(config["base_model"], config["trust_remote_code"])
    dtype = torch.bfloat16 if config["bf16"] else torch.float32
    model = load_model(config["base_model"], dtype, config["trust_remote_code"]).train()
    if config["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config["lora_r"], lora_alpha=config["lora_alpha"],
                          lora_dropout=config["lora_dropout"],
                          target_modules=config["lora_target_modules"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, tokenizer


def deepspeed_config(config: dict, world: int) -> dict:
    zero: dict = {"stage": config["zero_stage"]}
    if config["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": config["batch_size"],
        "gradient_accumulation_steps": config["grad_accum"],
        "train_batch_size": config["batch_size"] * config["grad_accum"] * world,
        "zero_optimization": zero,
        "bf16": {"enabled": config["bf16"]},
        "gradient_clipping": config["max_grad_norm"],
        "zero_allow_untested_optimizer": True,  # our torch AdamW: nothing to compile
        "steps_per_print": 10**9,  # we log ourselves
    }


def _prepare_engine(config: dict, world: int):
    """The DeepSpeed engine over a fresh model, with the previous round's state when there is one."""
    import torch

    torch.manual_seed(config["seed"])  # same LoRA init on every rank
    model, tokenizer = _build_model(config)
    engine = _deepspeed_engine(model, config, world)
    if config["resume_from"]:
        _restore(engine, config["resume_from"], lora=config["method"] == "lora")
        # LambdaLR restored the schedule object saved with the state; the run's config decides it.
        schedule = WarmupCosine(config["total_steps"], config["warmup_steps"])
        engine.lr_scheduler.lr_lambdas[0].__dict__.update(schedule.__dict__)
    return engine, tokenizer


def _deepspeed_engine(model, config: dict, world: int):
    import deepspeed
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if config["offload_optimizer"]:
        # ZeRO-Offload refuses torch optimizers; DeepSpeedCPUAdam is compiled on first use.
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, lr=config["learning_rate"], weight_decay=config["weight_decay"],
                                     adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=config["learning_rate"], weight_decay=config["weight_decay"])
    schedule = WarmupCosine(config["total_steps"], config["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(config, world))
    return engine


def optimizer_step(engine) -> int:
    """Adam's own step count (its state, not the engine's counter): shows the optimizer state carried over."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps the torch optimizer
    return max((int(s["step"]) for s in inner.state.values() if "step" in s), default=0)


def worker_nodes() -> list[str]:
    """Every rank's Ray node id, in rank order (gathered over the workers' process group)."""
    import ray
    import torch.distributed as dist

    nodes = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    return nodes


def trainable_norm(engine) -> float:
    """L2 norm of the trainable weights (ZeRO-3: of every rank's partition); shows what was restored."""
    import torch
    import torch.distributed as dist

    params = [p for p in engine.module.parameters() if p.requires_grad]
    partitioned = hasattr(params[0], "ds_tensor")  # ZeRO-3: each rank holds a slice (zero-padded)
    total = sum((getattr(p, "ds_tensor", p).detach().float().pow(2).sum() for p in params), torch.zeros(()))
    if partitioned:
        dist.all_reduce(total)
    return total.sqrt().item()


def _restore(engine, checkpoint_path: str, lora: bool) -> None:
    """Weights, optimizer, LR scheduler and step counter as the previous round left them."""
    from ray.train import Checkpoint

    with Checkpoint(checkpoint_path).as_directory() as d:
        path, _ = engine.load_checkpoint(str(Path(d) / "deepspeed"), tag=DS_TAG,
                                         load_module_strict=not lora,  # LoRA saves trainable weights only
                                         load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"no DeepSpeed state found in {checkpoint_path}/deepspeed/{DS_TAG}")
    log.info("restored %s: global step %d, lr %.3g", checkpoint_path, engine.global_steps, engine.get_lr()[0])


# --- data and loop ------------------------------------------------------------------------


def _load_shard(rank: int, batch_size: int) -> list[list[tuple]]:
    """This worker's micro-batches of (input_ids, answer_start, answer_end), in slot order
    (Ray Data may deliver blocks in any order; the slots were numbered on the driver)."""
    import ray.train

    rows = {}
    shard = ray.train.get_dataset_shard(f"train_{rank}")
    for batch in shard.iter_batches(batch_format="pyarrow", batch_size=None):
        for pos, ids, start, end in zip(batch["position"].to_pylist(), batch["input_ids"].to_numpy(False),
                                        batch["answer_start"].to_pylist(), batch["answer_end"].to_pylist(), strict=True):
            rows[pos] = (ids, start, end)
    if sorted(rows) != list(range(len(rows))) or len(rows) % batch_size:
        raise RuntimeError(f"worker {rank}: its training slots are not contiguous ({len(rows)} rows)")
    ordered = [rows[p] for p in range(len(rows))]
    return [ordered[i: i + batch_size] for i in range(0, len(ordered), batch_size)]


def _train(engine, batches: list[list[tuple]], pad_id: int, log_every: int, rank: int,
           round_idx: int) -> list[float]:
    """Run every micro-batch; returns the loss of each optimizer step (mean over micro-batches and ranks)."""
    import torch
    import torch.distributed as dist

    from raysel.progress import Progress

    step_losses, window = [], []
    steps = len(batches) // engine.gradient_accumulation_steps()
    # Rank 0 speaks for all; a worker's output is forwarded, never a terminal: log lines, no bar.
    progress = Progress(steps, f"round {round_idx} training", "steps") if rank == 0 else None
    for rows in batches:
        batch = {k: v.to(engine.device) for k, v in collate(rows, pad_id).items()}
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = answer_loss(logits, batch["labels"])
        engine.backward(loss)
        engine.step()
        window.append(loss.detach().float())
        if len(window) == engine.gradient_accumulation_steps():
            mean = torch.stack(window).mean()
            dist.all_reduce(mean)
            step_losses.append(mean.item() / dist.get_world_size())
            window = []
            if progress is not None:
                progress.update(1, note=f"step {engine.global_steps}, loss {step_losses[-1]:.4f}, "
                                        f"lr {engine.get_lr()[0]:.3g}")
                if engine.global_steps % log_every == 0:
                    progress.line()
    if progress is not None:
        progress.close()
    return step_losses


# --- saving -------------------------------------------------------------------------------


def _save_and_report(engine, tokenizer, config: dict, metrics: dict, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="raysel-ckpt-") as d:
        lora = config["method"] == "lora"
        # LoRA: the frozen base is not saved again each round, only the trainable weights.
        engine.save_checkpoint(str(Path(d) / "deepspeed"), tag=DS_TAG, exclude_frozen_parameters=lora)
        state_dict = _full_state_dict(engine, config["zero_stage"], trainable_only=lora)
        if rank == 0:
            _export(engine.module, state_dict, tokenizer, Path(d) / "export", config)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=TRAIN_STATE_DIR)


def _full_state_dict(engine, zero_stage: int, trainable_only: bool) -> dict | None:
    """The model's weights on rank 0 (None elsewhere), gathered from the ZeRO-3 partitions.

    Collective under ZeRO-3: every rank must call it.
    """
    import deepspeed
    import torch.distributed as dist

    module = engine.module
    if zero_stage < 3:
        return None  # every rank holds whole parameters: save_pretrained reads them directly
    if not trainable_only:
        return engine._zero3_consolidated_16bit_state_dict()  # despite the name: the training dtype
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        if dist.get_rank() == 0:
            return {n: p.detach().cpu().clone() for n, p in params.items()}
    return None


def _export(module, state_dict: dict | None, tokenizer, out: Path, config: dict) -> None:
    """A folder plain transformers/peft load: the adapter (or full weights) and the tokenizer."""
    module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if config["method"] == "lora" and config["merge_weights"]:
        _export_merged(out, config)


def _export_merged(adapter_dir: Path, config: dict) -> None:
    """Base + adapter merged into plain weights, built from the saved adapter (any ZeRO stage)."""
    from peft import PeftModel

    from raysel.models import load_model, load_tokenizer

    base = load_model(config["base_model"], trust_remote_code=config["trust_remote_code"])
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(adapter_dir / "merged", safe_serialization=True)
    load_tokenizer(str(adapter_dir)).save_pretrained(adapter_dir / "merged")
