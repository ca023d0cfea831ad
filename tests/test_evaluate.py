"""Held-out evaluation: answer losses against a direct computation, accuracy against known answers."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysel.config import load_config
from raysel.evaluate import EVAL_SCHEMA, answers_match, evaluate, final_number, summarise


@pytest.mark.parametrize("generated, reference, match", [
    ("So the discount is $22.", "22", True),
    ("First 70 × 3 = 210, then 210 × 6 = 1,260. So it makes 1260 bricks.", "It makes 1,260 bricks.", True),
    ("I think the answer is 54, final answer.", "54", True),
    ("The total is 162.0 dollars", "So Liam spends $162 altogether.", True),
    ("The answer is 41.", "42", False),
    ("I do not know.", "42", False),
    ("-3.5 degrees", "The temperature fell to -3.5", True),
])
def test_answers_match_on_the_final_number(generated, reference, match):
    assert answers_match(generated, reference) is match


def test_final_number_keeps_separate_numbers_apart():
    assert final_number("3, 4 and 5") == 5
    assert final_number("12,345.5 in all") == pytest.approx(12345.5)
    assert final_number(None) is None


def test_summary_counts_accuracy_and_weights_losses_by_tokens():
    rows = [
        {"id": "a", "domain": "arithmetic", "status": "scored", "reason": None, "loss": 1.0, "n_answer_tokens": 10,
         "generated": "so 5", "correct": True},
        {"id": "b", "domain": "arithmetic", "status": "scored", "reason": None, "loss": 4.0, "n_answer_tokens": 30,
         "generated": "so 6", "correct": False},
        {"id": "c", "domain": "factual", "status": "scored", "reason": None, "loss": 2.0, "n_answer_tokens": 5,
         "generated": None, "correct": None},
        {"id": "d", "domain": "factual", "status": "invalid", "reason": "empty response", "loss": None,
         "n_answer_tokens": None, "generated": None, "correct": None},
    ]
    s = summarise(pa.Table.from_pylist(rows, schema=EVAL_SCHEMA))
    arith, factual = s["by_domain"]["arithmetic"], s["by_domain"]["factual"]
    assert arith["loss"] == pytest.approx((1.0 * 10 + 4.0 * 30) / 40) and arith["accuracy"] == 0.5
    assert factual["loss"] == 2.0 and factual["accuracy"] is None and factual["rows"] == 2 and factual["scored"] == 1
    assert s["mean_loss"] == pytest.approx((arith["loss"] + 2.0) / 2)


def test_eval_losses_equal_a_direct_computation(ray_session, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysel.templates import render

    heldout = tmp_path / "heldout"
    heldout.mkdir()
    (heldout / "arithmetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "What is 12 plus 30?", "output": "12 + 30 = 42. The answer is 42."},
        {"instruction": "Add 5 and 6.", "input": "Show the sum.", "output": "5 + 6 = 11."}]))
    (heldout / "factual.jsonl").write_text(json.dumps({"instruction": "Capital of France?", "output": "Paris.",
                                                     "domain": "factual"}) + "\n" + "{broken\n")
    cfg = load_config("configs/tiny.yaml", [f"model.path={tiny_model_dir}", f"eval.heldout=[{heldout}]",
                                            "eval.max_new_tokens=8", "scoring.dtype=float32"])
    summary = evaluate(str(tiny_model_dir), cfg, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "eval.parquet").to_pylist()
    assert len(table) == 4, "one row per held-out line"
    assert [r["status"] for r in table if r["id"] == "factual:1"] == ["invalid"]
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["by_domain"].keys() == {"arithmetic", "factual"}

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = {"arithmetic:0": ([{"role": "user", "content": "What is 12 plus 30?"}], "12 + 30 = 42. The answer is 42."),
               "arithmetic:1": ([{"role": "user", "content": "Add 5 and 6.\nShow the sum."}], "5 + 6 = 11."),
               "factual:0": ([{"role": "user", "content": "Capital of France?"}], "Paris.")}
    for row in table:
        if row["id"] not in prompts:
            continue
        r = render(tok, *prompts[row["id"]], max_length=256)
        with torch.no_grad():
            logits = model(torch.tensor([r.input_ids])).logits[0]
        targets = torch.tensor(r.input_ids[r.answer_start:r.answer_end])
        direct = torch.nn.functional.cross_entropy(logits[r.answer_start - 1:r.answer_end - 1], targets)
        assert row["loss"] == pytest.approx(direct.item(), rel=1e-4)
        assert row["n_answer_tokens"] == r.n_answer
        assert (row["correct"] is not None) == row["id"].startswith("arithmetic")
    arith = [r for r in table if r["domain"] == "arithmetic"]
    want = sum(r["loss"] * r["n_answer_tokens"] for r in arith) / sum(r["n_answer_tokens"] for r in arith)
    assert summary["by_domain"]["arithmetic"]["loss"] == pytest.approx(want)
