"""Fine-tuning between rounds: the pure plan (steps, schedule, slots, batches, loss) against
simple oracles, then real Ray Train + DeepSpeed runs on the tiny random model (CPU, gloo)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysel.config import Config, TrainingConfig
from raysel.templates import render
from raysel.training.plan import (
    IGNORE_INDEX,
    BatchShape,
    WarmupCosine,
    answer_loss,
    assign_slots,
    collate,
    steps_per_round,
    total_steps,
)

# --- the plan, no Ray ---------------------------------------------------------------------


def test_auto_precision_takes_bf16_only_where_it_is_fast(monkeypatch):
    import raysel.models
    from raysel.training.worker import use_bf16

    assert use_bf16("bf16", use_gpu=False) and not use_bf16("fp32", use_gpu=True)
    assert use_bf16("auto", use_gpu=True)
    for fast in (True, False):  # bf16 without AMX runs 2x (AVX512-BF16) to 50x (AVX2) slower than fp32
        monkeypatch.setattr(raysel.models, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert use_bf16("auto", use_gpu=False) is fast


def test_steps_cover_every_row_and_the_schedule_spans_all_rounds():
    t = TrainingConfig(batch_size=2, num_workers=2, gradient_accumulation=2, epochs=3)
    assert steps_per_round(8, t) == 3 * 1
    assert steps_per_round(9, t) == 3 * 2  # the ninth row gets its own (topped-up) step
    assert total_steps(9, rounds=4, training_cfg=t) == 4 * 6


def test_warmup_cosine_matches_transformers():
    import torch
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    oracle = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=20)
    ours = WarmupCosine(total=20, warmup=3)
    for step in range(20):
        assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        oracle.step()
    assert ours(20) == pytest.approx(0.0, abs=1e-12) and ours(25) == 0.0


@pytest.mark.parametrize("n,shape,epochs", [(7, BatchShape(2, 2, 1), 1), (16, BatchShape(2, 2, 2), 2),
                                            (5, BatchShape(3, 1, 1), 3), (1, BatchShape(1, 3, 2), 1)])
def test_slots_give_every_worker_whole_contiguous_steps(n, shape, epochs):
    ids = [f"r{i}" for i in range(n)]
    slots = assign_slots(ids, shape, epochs, seed=3, round_idx=1)
    steps = math.ceil(n / shape.rows_per_step) * epochs
    for w in range(shape.num_workers):
        positions = sorted(p for s in slots.values() for worker, p in s if worker == w)
        assert positions == list(range(steps * shape.grad_accum * shape.batch_size))
    assert all(len(s) >= epochs for s in slots.values())  # every row, every epoch
    assert sum(len(s) for s in slots.values()) == steps * shape.rows_per_step


def test_slots_are_seeded_and_independent_of_the_order_of_ids():
    ids = [f"r{i}" for i in range(20)]
    shape = BatchShape(2, 2, 1)
    a = assign_slots(ids, shape, 1, seed=0, round_idx=0)
    assert a == assign_slots(list(reversed(ids)), shape, 1, seed=0, round_idx=0)
    assert a != assign_slots(ids, shape, 1, seed=1, round_idx=0)
    assert a != assign_slots(ids, shape, 1, seed=0, round_idx=1)


def test_collate_pads_right_and_labels_only_the_answer():
    rows = [(np.array([5, 6, 7, 8]), 2, 4), (np.array([9, 10]), 1, 2)]
    b = collate(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX]]


def test_answer_loss_is_the_mean_nll_of_answer_tokens():
    import torch

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 7, IGNORE_INDEX] + [IGNORE_INDEX] * 2])
    logp = torch.log_softmax(logits, -1)
    oracle = -(logp[0, 1, 3] + logp[0, 2, 4] + logp[1, 0, 7]) / 3  # position t predicts token t+1
    assert answer_loss(logits, labels).item() == pytest.approx(oracle.item(), rel=1e-6)
    empty = torch.full((1, 5), IGNORE_INDEX)
    assert answer_loss(logits[:1], empty).item() == 0.0


@pytest.mark.parametrize("template", ["chatml", "default"])
def test_answer_span_ends_with_the_end_of_turn_token(template, tiny_model_dir, tiny_model_dir_plain):
    from raysel.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir if template == "chatml" else tiny_model_dir_plain))
    r = render(tok, [{"role": "user", "content": "What is 12 plus 30?"}], "The answer is 42.", 256)
    eos = "<|im_end|>" if template == "chatml" else "<|endoftext|>"
    assert tok.eos_token == eos  # ChatML's end of turn is the model's EOS; the default template appends EOS
    assert r.input_ids[r.answer_end - 1] == tok.convert_tokens_to_ids(eos)
    assert tok.decode(r.input_ids[r.answer_start:r.answer_end - 1]) == "The answer is 42."


# --- real Ray Train + DeepSpeed runs ------------------------------------------------------

PROMPTS = ["What is 12 plus 30?", "Name the capital of France.", "Write a function that adds two numbers.",
           "Count the apples.", "Where does the fox jump?", "At what temperature does water boil?"]


def write_rows(path, n: int = 14):
    """A rows.parquet folder in the pool's schema: n valid rows and two invalid ones."""
    from raysel.pool import ROW_SCHEMA

    rows = [{"id": f"row-{i:02d}", "status": "valid", "reason": None, "source": "pool.jsonl", "source_row": i,
             "prompt": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" ({i})"}],
             "response": f"The answer is {i * 7}. " + "So 5 - 2 = 3. " * (i % 3), "raw": "{}"}
            for i in range(n)]
    rows += [{"id": f"bad-{i}", "status": "invalid", "reason": "empty response", "source": "pool.jsonl",
              "source_row": n + i, "prompt": None, "response": None, "raw": "{}"} for i in range(2)]
    path.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), path / "part-0.parquet")
    return path


def tiny_config(**training) -> Config:
    cfg = Config()
    cfg.model.max_length = 64
    cfg.run.seed = 7
    defaults = dict(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=5e-3, warmup_ratio=0.25,
                    batch_size=2, num_workers=2, zero_stage=2, use_gpu="no", precision="auto", log_every=1)
    for k, v in {**defaults, **training}.items():
        setattr(cfg.training, k, v)
    return cfg


def answer_losses(model, tokenizer, texts):
    """Per-text mean answer NLL under `model` (plain forward, the oracle for 'the weights changed')."""
    import torch

    out = []
    for prompt, response in texts:
        r = render(tokenizer, [{"role": "user", "content": prompt}], response, 64)
        b = collate([(np.array(r.input_ids), r.answer_start, r.answer_end)], tokenizer.pad_token_id)
        with torch.no_grad():
            out.append(answer_loss(model(input_ids=b["input_ids"]).logits, b["labels"]).item())
    return np.array(out)


PROBE = [("What is 12 plus 30?", "The answer is 42."), ("Count the apples.", "So 5 - 2 = 3.")]

SELECTED = [[f"row-{i:02d}" for i in range(0, 14, 2)],  # round 0: 7 rows -> 2 steps of 4
            [f"row-{i:02d}" for i in range(1, 14, 3)]]  # round 1: 5 rows -> 2 steps


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, ray_session):
    """Two rounds, two workers, ZeRO-2, LoRA. (That a round re-run from the previous state repeats
    itself is checked end to end by tests/test_iterit.py's resume test.)"""
    from raysel.training import total_steps, train_round

    tmp = tmp_path_factory.mktemp("lora-run")
    rows, run = write_rows(tmp / "rows.parquet"), tmp / "run"
    cfg = tiny_config(lora_dropout=0.1, merge_weights=True)
    total = sum(steps_per_round(len(s), cfg.training) for s in SELECTED)
    assert total == total_steps(7, 2, cfg.training)
    metrics = [train_round(cfg, rows, ids, run, r, str(tiny_model_dir), total) for r, ids in enumerate(SELECTED)]
    return {"run": run, "cfg": cfg, "total": total, "metrics": metrics}


def test_each_round_exports_an_adapter_that_plain_peft_and_raysel_load(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysel.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    base_losses = answer_losses(load_model(str(tiny_model_dir)), tok, PROBE)
    losses = []
    for r in range(2):
        ckpt = lora_run["run"] / f"round-{r}" / "checkpoint"
        assert (ckpt / "adapter_config.json").exists() and (ckpt / "tokenizer_config.json").exists()
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ckpt).eval()
        assert AutoTokenizer.from_pretrained(ckpt).eos_token == tok.eos_token
        ours = load_model(str(ckpt))
        losses.append(answer_losses(ours, tok, PROBE))
        np.testing.assert_allclose(answer_losses(plain, tok, PROBE), losses[-1], rtol=1e-6)
    assert np.abs(losses[0] - base_losses).max() > 1e-3  # round 0 changed the model
    assert np.abs(losses[1] - losses[0]).max() > 1e-3  # and round 1 changed it again


def test_merged_weights_match_base_plus_adapter(lora_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from raysel.models import load_model, load_tokenizer

    ckpt = lora_run["run"] / "round-1" / "checkpoint"
    tok = load_tokenizer(str(ckpt / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(ckpt / "merged")
    assert not hasattr(merged, "peft_config")
    np.testing.assert_allclose(answer_losses(merged, tok, PROBE), answer_losses(load_model(str(ckpt)), tok, PROBE),
                               rtol=1e-5)


def test_schedule_and_optimizer_continue_across_rounds(lora_run):
    m0, m1 = lora_run["metrics"]
    total = lora_run["total"]
    cfg = lora_run["cfg"].training
    assert (m0["start_global_step"], m0["steps"], m0["global_step"]) == (0, 2, 2)
    assert (m1["start_global_step"], m1["steps"], m1["global_step"]) == (2, 2, 4)
    assert m1["start_lr"] == pytest.approx(m0["lr"], rel=1e-9)  # round 1 starts where round 0 stopped
    assert m1["start_optimizer_step"] == m0["optimizer_step"] == 2  # Adam's state came along
    assert m1["start_weight_norm"] == pytest.approx(m0["weight_norm"], rel=1e-6)  # and the weights
    assert m0["weight_norm"] != pytest.approx(m0["start_weight_norm"], rel=1e-3)
    warmup = math.ceil(total * cfg.warmup_ratio)
    for m in (m0, m1):
        assert m["lr"] == pytest.approx(cfg.learning_rate * WarmupCosine(total, warmup)(m["global_step"]), abs=1e-12)
    assert m1["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends with the last round
    assert all(math.isfinite(m["mean_loss"]) for m in (m0, m1))


def test_round_without_previous_state_says_what_to_do(tmp_path, tiny_model_dir):
    from raysel.training import train_round

    with pytest.raises(FileNotFoundError, match="train round 2 first"):
        train_round(tiny_config(), tmp_path / "rows.parquet", ["row-00"], tmp_path / "run", 3, str(tiny_model_dir), 4)


def test_selected_ids_that_are_not_valid_rows_are_named(tmp_path, tiny_model_dir):
    from raysel.training import train_round

    rows = write_rows(tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match=r"2 of the 3 selected ids .*'bad-0', 'nope'"):
        train_round(tiny_config(), rows, ["row-00", "bad-0", "nope"], tmp_path / "run", 0, str(tiny_model_dir), 1)


def test_full_fine_tuning_with_zero3_exports_full_weights(tmp_path, tiny_model_dir, ray_session):
    from transformers import AutoModelForCausalLM

    from raysel.models import load_model, load_tokenizer
    from raysel.training import train_round

    rows, run = write_rows(tmp_path / "rows.parquet"), tmp_path / "run"
    cfg = tiny_config(method="full", zero_stage=3, learning_rate=1e-3)
    metrics = train_round(cfg, rows, SELECTED[0], run, 0, str(tiny_model_dir), total_steps=2)
    assert metrics["global_step"] == 2
    ckpt = run / "round-0" / "checkpoint"
    assert not (ckpt / "adapter_config.json").exists()
    tuned = AutoModelForCausalLM.from_pretrained(ckpt)
    base = load_model(str(tiny_model_dir))
    tok = load_tokenizer(str(ckpt))
    assert np.abs(answer_losses(tuned, tok, PROBE) - answer_losses(base, tok, PROBE)).max() > 1e-3
    tuned_sd, base_sd = tuned.state_dict(), base.state_dict()
    assert tuned_sd.keys() == base_sd.keys()
    assert all(tuned_sd[k].shape == base_sd[k].shape for k in base_sd)  # gathered, not ZeRO-3 placeholders
