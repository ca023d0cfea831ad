"""DaaR's parts against simple oracles: features, k-means from centroids, the heads, the selector."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from raysel.config import UserError
from raysel.daar.domains import centroids, domain_names, pseudo_labels, read_seeds
from raysel.daar.features import ProbeEncoder, masked_mean, render_text, truncate_decoder
from raysel.daar.heads import HeadOptions, entropy, load_heads, save_heads, train_heads
from raysel.demo.tiny import build_model, build_tokenizer
from raysel.selection import select
from raysel.selection.daar import REWARD_INVALID, quotas

TEXTS = ["What is 12 plus 30?", "def add(a, b):\n    return a + b\n and a longer tail of text to pad", "Paris",
         "First, count the apples. Then subtract the eaten ones."]


def test_render_text_leaves_out_an_empty_input():
    assert render_text("Q", "", "A") == "Instruction: Q\nOutput: A"
    assert render_text("Q", "ctx", "A") == "Instruction: Q\nInput: ctx\nOutput: A"


@pytest.mark.parametrize("layers", [1, 2])
def test_truncated_model_features_equal_the_full_models_hidden_state_at_that_layer(layers):
    tok = build_tokenizer()
    model = build_model(tok, layers=3)
    full = copy.deepcopy(model)
    probe, inputs = ProbeEncoder(model, tok, probe_layers=layers, max_length=64).encode(TEXTS)
    for i, text in enumerate(TEXTS):
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = full(**ids, output_hidden_states=True).hidden_states
        np.testing.assert_allclose(probe[i], hidden[layers][0].mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(inputs[i], hidden[0][0].mean(0).numpy(), atol=1e-6)
    assert len(truncate_decoder(build_model(tok, layers=3), 2).layers) == 2


def test_truncation_works_for_gpt2_style_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=2)).eval()
    full = copy.deepcopy(model)
    probe, _ = ProbeEncoder(model, tok, probe_layers=2, max_length=64).encode(TEXTS[:2])
    ids = tok(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        hidden = full(**ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(probe[0], hidden[2][0].mean(0).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="3 decoder layers"):
        truncate_decoder(build_model(tok, layers=3), 4)


def test_pooling_does_not_depend_on_padding_or_batch():
    tok = build_tokenizer()
    model = build_model(tok, layers=2)
    alone = [ProbeEncoder(copy.deepcopy(model), tok, 2, 64, token_budget=1).encode([t]) for t in TEXTS]
    together = ProbeEncoder(copy.deepcopy(model), tok, 2, 64, token_budget=10_000).encode(TEXTS)
    assert len(set(len(tok(t)["input_ids"]) for t in TEXTS)) > 1, "the texts must need padding together"
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(together[0][i], alone[i][0][0], atol=1e-5)
        np.testing.assert_allclose(together[1][i], alone[i][1][0], atol=1e-6)


def test_masked_mean_ignores_masked_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert masked_mean(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_kmeans_keeps_each_domains_label_from_its_centroid():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)).astype(np.float32) * 5
    truth = rng.integers(0, 4, size=400)
    x = centers[truth] + rng.normal(scale=0.3, size=(400, 16)).astype(np.float32)
    # centroids from a few noisy "seeds" per domain, listed in domain order
    seeds = np.concatenate([centers[d] + rng.normal(scale=0.5, size=(5, 16)) for d in range(4)])
    c = centroids(seeds, [d for d in range(4) for _ in range(5)], [0, 1, 2, 3])
    labels = pseudo_labels(x, c, iterations=10)
    assert (labels == truth).all()
    permuted = [2, 0, 3, 1]  # the same centroids in another order: labels follow the order given
    assert (pseudo_labels(x, c[permuted]) == np.argsort(permuted)[truth]).all()


def test_domain_head_learns_a_separable_toy_problem():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 32)) * 3
    labels = rng.integers(0, 4, size=1000)
    x = (centers[labels] + rng.normal(size=(1000, 32))).astype(np.float32)
    heads, stats = train_heads(x, labels, 4, HeadOptions(epochs=10, batch_size=32, learning_rate=1e-3,
                                                         val_fraction=0.2), seed=0)
    assert stats["n_val"] == 200 and stats["domain_val_accuracy"] > 0.9
    assert stats["reward_val_mse"] < stats["reward_val_mse_of_mean"] or stats["reward_val_mse_of_mean"] < 1e-4
    scored = heads.score(x[:50])
    assert (scored["domain"] == labels[:50]).mean() > 0.9
    assert ((scored["entropy"] >= 0) & (scored["entropy"] <= math.log(4) + 1e-6)).all()


def test_heads_round_trip_through_safetensors(tmp_path):
    rng = np.random.default_rng(2)
    heads, _ = train_heads(rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 3, 40), 3,
                           HeadOptions(epochs=1), seed=0)
    save_heads(heads, tmp_path / "heads.safetensors")
    x = rng.normal(size=(5, 8)).astype(np.float32)
    again = load_heads(tmp_path / "heads.safetensors").score(x)
    for key, value in heads.score(x).items():
        np.testing.assert_allclose(again[key], value)


def test_entropy_is_zero_at_one_hot_and_ln_d_at_uniform():
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25] * 4, [0.7, 0.1, 0.1, 0.1]])
    h = entropy(probs)
    assert h[0].item() == 0.0
    assert h[1].item() == pytest.approx(math.log(4))
    assert 0 < h[2].item() < math.log(4)


def test_overall_takes_the_top_rewards_with_ties_to_the_lower_id():
    ids = np.array(["e", "d", "c", "b", "a"], dtype=object)
    reward = np.array([0.1, 0.9, 0.5, 0.5, np.nan])
    sel = select("daar", None, 2, 5, ids=ids, scores={"reward": reward, "pseudo_domain": np.array(list("xxyyy"))})
    assert ids[sel.selected].tolist() == ["d", "b"]  # 0.9, then 0.5 with b before c
    assert ids[sel.order].tolist() == ["d", "b", "c", "e"]
    assert sel.reason[4] == REWARD_INVALID


def test_per_domain_meets_each_quota_by_reward():
    rng = np.random.default_rng(3)
    ids = np.array([f"r{i:03d}" for i in range(100)], dtype=object)
    domains = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10, dtype=object)
    reward = rng.random(100)
    reward[:60] += 10  # domain a would take every place overall
    sel = select("daar", None, 20, 100, ids=ids, scores={"reward": reward, "pseudo_domain": domains},
                 options={"mode": "per_domain"})
    picked = domains[sel.selected]
    assert {d: int((picked == d).sum()) for d in "abc"} == {"a": 12, "b": 6, "c": 2}
    for d in "abc":  # within a domain: its best rewards
        in_d = np.flatnonzero(domains == d)
        best = set(in_d[np.argsort(-reward[in_d])][: (picked == d).sum()])
        assert set(sel.selected[picked == d]) == best
    shared = select("daar", None, 20, 100, ids=ids, scores={"reward": reward, "pseudo_domain": domains},
                    options={"mode": "per_domain", "shares": {"a": 1, "b": 1, "c": 2}})
    assert {d: int((domains[shared.selected] == d).sum()) for d in "abc"} == {"a": 5, "b": 5, "c": 10}


def test_quotas_split_by_largest_remainder_and_pass_on_what_a_domain_lacks():
    assert quotas({"a": 10, "b": 5, "c": 1}, 7, {}) == {"a": 4, "b": 2, "c": 1}
    assert quotas({"a": 100, "b": 1}, 10, {"a": 1, "b": 1}) == {"a": 9, "b": 1}
    assert quotas({"a": 2, "b": 2}, 10, {}) == {"a": 2, "b": 2}
    for k in range(0, 17):
        assert sum(quotas({"a": 10, "b": 5, "c": 1}, k, {"a": 1, "b": 3, "c": 0}).values()) == k


def test_seeds_file_errors_name_the_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps({"domain": "a", "instruction": "Q", "output": "A"}) + "\n{bad\n")
    with pytest.raises(UserError, match="line 2"):
        read_seeds(path)
    path.write_text(json.dumps({"domain": "a", "instruction": "Q", "output": 3}) + "\n")
    with pytest.raises(UserError, match="line 1"):
        read_seeds(path)
    with pytest.raises(UserError, match="does not exist"):
        read_seeds(tmp_path / "missing.jsonl")


def test_demo_seeds_cover_the_demo_domains_ten_each():
    seeds = read_seeds("demo")
    assert domain_names(seeds, []) == ["arithmetic", "code", "factual", "reasoning"]  # as they first appear
    assert all(sum(s["domain"] == d for s in seeds) == 10 for d in domain_names(seeds, []))
    assert domain_names(seeds, ["code: python", "factual"]) == ["code", "factual"]
    with pytest.raises(UserError, match="no seeds"):
        domain_names(seeds, ["poetry"])


def test_domain_shares_need_one_share_per_named_domain():
    from raysel.config import ConfigError, DaaRConfig
    from raysel.selection.daar import daar_options

    with pytest.raises(ConfigError, match="one share per domain"):
        daar_options(DaaRConfig(domain_shares=[1.0]))
    options = daar_options(DaaRConfig(domains=["a: sums", "b"], domain_shares=[1.0, 3.0], select="per_domain"))
    assert options == {"mode": "per_domain", "shares": {"a": 1.0, "b": 3.0}}
