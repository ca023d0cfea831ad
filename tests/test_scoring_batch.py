"""Batched IFD scoring (no Ray): batched equals one-at-a-time, both equal a full-logits oracle,
truncation and invalid samples follow docs/methods.md, embeddings ignore padding."""

from __future__ import annotations

import math

import pytest
import torch

from raysel.actor_map import plan_actors
from raysel.config import ScoringConfig
from raysel.models import load_model, load_tokenizer
from raysel.scoring.batch import BatchScorer, _Seq, encode_sample, plan_micro_batches, shared_prefix
from raysel.templates import render, render_plain

SAMPLES = [
    ([{"role": "user", "content": "What is 12 plus 30?"}], "The answer is 42."),
    ([{"role": "user", "content": "Hi"}], "def add(a, b):\n    return a + b\n" * 12),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}], "Paris."),
    ([{"role": "user", "content": "Count the apples. " * 15}], "First, count. Then subtract. So 5 - 2 = 3."),
    ([{"role": "user", "content": "x"}], "y"),
]


@pytest.fixture(scope="module", params=["chat", "plain"])
def model_and_tokenizer(request, tiny_model_dir, tiny_model_dir_plain):
    path = str(tiny_model_dir if request.param == "chat" else tiny_model_dir_plain)
    return load_model(path), load_tokenizer(path)


# --- the oracle: full logits, one sample, one text at a time ------------------------------------

def answer_nll(model, ids: list[int], start: int, n: int) -> float:
    """Mean NLL of ids[start:start+n] from the full [1, seq, vocab] logits of one forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return -sum(logp[t - 1, ids[t]].item() for t in range(start, start + n)) / n


def reference_ifd(model, tokenizer, prompt, response, max_length, prior_context="template"):
    cond = render(tokenizer, prompt, response, max_length)
    if prior_context == "template":
        prior = render(tokenizer, [], response, max_length)
    else:
        prior = render_plain(tokenizer, response, max_length)
    # The same leading answer tokens in both texts (the plain prior has no end-of-turn token).
    n = min(cond.n_answer, prior.n_answer)
    l_cond = answer_nll(model, cond.input_ids, cond.answer_start, n)
    l_prior = answer_nll(model, prior.input_ids, prior.answer_start, n)
    return l_cond, l_prior, math.exp(l_cond - l_prior), n


# --- batched versus one at a time, versus the oracle ------------------------------------------------

@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_scores_equal_one_sample_at_a_time(model_and_tokenizer, padding_side):
    model, tokenizer = model_and_tokenizer
    # A small token budget, LM-head chunk and vocabulary slice (not a divisor of the tiny
    # model's 512 ids) force several micro-batches, chunks and slices; alone, the whole vocabulary.
    scorer = BatchScorer(model, tokenizer, max_length=256, padding_side=padding_side, token_budget=600,
                         lm_head_chunk=16, vocab_chunk=100)
    batched = scorer.score(SAMPLES)
    assert scorer.stats["padded_tokens"] > scorer.stats["forward_tokens"]  # padding really happened
    for sample, got in zip(SAMPLES, batched, strict=True):
        alone = BatchScorer(model, tokenizer, max_length=256, vocab_chunk=0).score([sample])[0]
        assert got.status == alone.status == "scored"
        assert got.n_answer_tokens == alone.n_answer_tokens
        assert got.l_cond == pytest.approx(alone.l_cond, abs=1e-4)
        assert got.l_prior == pytest.approx(alone.l_prior, abs=1e-4)
        assert got.ifd == pytest.approx(alone.ifd, abs=1e-4)
        torch.testing.assert_close(got.embedding, alone.embedding, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prior_context", ["template", "plain"])
def test_ifd_matches_full_logits_reference(model_and_tokenizer, prior_context):
    model, tokenizer = model_and_tokenizer
    scorer = BatchScorer(model, tokenizer, max_length=256, prior_context=prior_context, vocab_chunk=64)
    scores = scorer.score(SAMPLES)
    assert scorer.stats["prefix_tokens"] > 0  # the oracle checks the shared-prefix path too
    for (prompt, response), got in zip(SAMPLES, scores, strict=True):
        l_cond, l_prior, ifd, n = reference_ifd(model, tokenizer, prompt, response, 256, prior_context)
        assert got.n_answer_tokens == n
        assert got.l_cond == pytest.approx(l_cond, abs=1e-4)
        assert got.l_prior == pytest.approx(l_prior, abs=1e-4)
        assert got.ifd == pytest.approx(ifd, abs=1e-4)
        assert not got.truncated


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_shared_prefix_runs_once_and_changes_no_score(model_and_tokenizer, padding_side):
    model, tokenizer = model_and_tokenizer
    shared = BatchScorer(model, tokenizer, padding_side=padding_side, token_budget=600, lm_head_chunk=16)
    unshared = BatchScorer(model, tokenizer, padding_side=padding_side, token_budget=600, lm_head_chunk=16,
                           share_prefix=False)
    got, want = shared.score(SAMPLES), unshared.score(SAMPLES)
    assert shared.stats["prefix_tokens"] > 0 and unshared.stats["prefix_tokens"] == 0
    assert shared.stats["forward_tokens"] < unshared.stats["forward_tokens"]
    for g, w in zip(got, want, strict=True):
        assert (g.l_cond, g.l_prior, g.ifd) == pytest.approx((w.l_cond, w.l_prior, w.ifd), abs=1e-5)
        torch.testing.assert_close(g.embedding, w.embedding, atol=1e-5, rtol=1e-5)
    # A second call with the same prefix reuses its cache: only the suffixes are computed.
    before = shared.stats["forward_tokens"]
    again = shared.score(SAMPLES)
    assert shared.stats["forward_tokens"] - before == before - len(shared._prefix.ids)
    assert [r.ifd for r in again] == pytest.approx([r.ifd for r in got], abs=1e-6)


def _tiny(family: str, vocab_size: int):
    import transformers as tf

    torch.manual_seed(0)
    kw = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2)
    if family == "mistral":  # a sliding window shorter than the shared prefix
        return tf.MistralForCausalLM(tf.MistralConfig(**kw, sliding_window=8)).eval()
    if family == "qwen2":  # sliding window on some layers only
        config = tf.Qwen2Config(**kw, use_sliding_window=True, sliding_window=8, max_window_layers=1)
        return tf.Qwen2ForCausalLM(config).eval()
    config = tf.GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return tf.GPT2LMHeadModel(config).eval()  # learned absolute positions


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gpt2"])
def test_shared_prefix_is_exact_across_model_families(tiny_model_dir, family):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = _tiny(family, len(tokenizer))
    scorer = BatchScorer(model, tokenizer, max_length=256, token_budget=600)
    scores = scorer.score(SAMPLES)
    assert scorer.stats["prefix_tokens"] > 0
    for (prompt, response), got in zip(SAMPLES, scores, strict=True):
        l_cond, l_prior, ifd, _ = reference_ifd(model, tokenizer, prompt, response, 256)
        assert (got.l_cond, got.l_prior, got.ifd) == pytest.approx((l_cond, l_prior, ifd), abs=1e-4)


def test_vocabulary_slices_handle_a_head_bias_and_a_logit_softcap(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    torch.manual_seed(2)
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_(0, 2.0)
    model.lm_head = head  # the model's own forward (the oracle's) adds the bias too
    sliced = BatchScorer(model, tokenizer, vocab_chunk=100).score(SAMPLES)
    for (prompt, response), got in zip(SAMPLES, sliced, strict=True):
        l_cond, l_prior, _, _ = reference_ifd(model, tokenizer, prompt, response, 1024)
        assert (got.l_cond, got.l_prior) == pytest.approx((l_cond, l_prior), abs=1e-4)
    model.config.final_logit_softcapping = 0.5  # Gemma 2's; tanh squashes each logit alike
    capped = BatchScorer(model, tokenizer, vocab_chunk=100).score(SAMPLES)
    whole = BatchScorer(model, tokenizer, vocab_chunk=0).score(SAMPLES)
    for c, w, s in zip(capped, whole, sliced, strict=True):
        assert (c.l_cond, c.l_prior) == pytest.approx((w.l_cond, w.l_prior), abs=1e-5)
        assert abs(c.l_cond - s.l_cond) > 1e-2  # the cap took part


def _seqs(*rows, start=8):
    return [_Seq(ids, start, 1, i, True) for i, ids in enumerate(rows)]


def test_shared_prefix_follows_the_majority_and_stops_before_the_scored_positions():
    a, b, own = [1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 0, 0, 0], [1, 2, 9, 9, 9, 9, 9, 9, 9]
    assert shared_prefix(_seqs(a, b, own)) == (6, [0, 1])  # `own` (a system prompt of its own) leaves
    assert shared_prefix(_seqs(a, a)) == (7, [0, 1])  # position start - 1 = 7 is scored from
    assert shared_prefix(_seqs(a, b, start=5)) == (4, [0, 1])
    assert shared_prefix(_seqs(a, b, start=4)) == (0, [])  # shorter than MIN_SHARED_PREFIX
    assert shared_prefix(_seqs(a, b, own, own)) == (6, [0, 1])  # a tie goes to the first seen
    assert shared_prefix(_seqs(a, own)) == (0, [])  # one sequence alone shares nothing
    assert shared_prefix([]) == (0, [])


def test_truncation_scores_the_surviving_answer_tokens_in_both_texts(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    prompt, response = SAMPLES[1]
    full = render(tokenizer, prompt, response, 10_000)
    max_length = full.answer_start + 7  # keeps exactly 7 answer tokens of the conditioned text
    got = BatchScorer(model, tokenizer, max_length=max_length).score([(prompt, response)])[0]
    assert got.status == "scored" and got.truncated and got.n_answer_tokens == 7
    l_cond, l_prior, ifd, n = reference_ifd(model, tokenizer, prompt, response, max_length)
    assert n == 7
    assert (got.l_cond, got.l_prior, got.ifd) == pytest.approx((l_cond, l_prior, ifd), abs=1e-4)
    # The prior text keeps only the scored answer tokens: nothing after them is computed.
    e = encode_sample(tokenizer, prompt, response, max_length)
    assert len(e.prior_ids) == e.prior_start + 7


@pytest.mark.parametrize("prior_context", ["template", "plain"])
def test_cutting_long_texts_before_tokenising_changes_nothing_scored(tiny_model_dir, monkeypatch, prior_context):
    from raysel import templates

    tokenizer = load_tokenizer(str(tiny_model_dir))
    samples = [([{"role": "user", "content": "Say it. " * 3000}], "fine"),  # the prompt fills max_length
               ([{"role": "user", "content": "Repeat."}], "a b c d " * 5000),  # a long answer, truncated
               ([{"role": "user", "content": "Q"}], "z" * 60_000)]  # one very long word
    clipped = [encode_sample(tokenizer, p, r, 64, prior_context) for p, r in samples]
    assert len(templates.clip(samples[1][1], 64)) == 64 * templates.MAX_CHARS_PER_TOKEN < len(samples[1][1])
    monkeypatch.setattr(templates, "MAX_CHARS_PER_TOKEN", 10**9)  # the oracle: every text tokenised whole
    whole = [encode_sample(tokenizer, p, r, 64, prior_context) for p, r in samples]
    assert clipped[1:] == whole[1:]
    # the unscorable one: the same reason and tokens (where its answer would start is past the cut)
    assert (clipped[0].reason, clipped[0].n_answer, clipped[0].cond_ids) == (whole[0].reason, 0, whole[0].cond_ids)


def test_no_answer_token_left_is_invalid_with_a_reason_not_nan(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    long_prompt = [{"role": "user", "content": "The quick brown fox. " * 40}]
    scores = BatchScorer(model, tokenizer, max_length=64).score([(long_prompt, "ok"), SAMPLES[0]])
    bad, good = scores
    assert bad.status == "invalid" and "max_length=64" in bad.reason
    assert bad.l_cond is None and bad.ifd is None and bad.n_answer_tokens == 0 and bad.embedding is None
    assert good.status == "scored" and math.isfinite(good.ifd)


def test_answer_starting_at_token_zero_skips_that_token(tiny_model_dir):
    _, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    e = encode_sample(tokenizer, [], "hello", 64, prior_context="plain")
    assert e.prior_start >= 1 and e.cond_start >= 1


# --- embeddings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("span", ["response", "text"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("layer", [-1, 1])
def test_masked_mean_embedding_ignores_padding(model_and_tokenizer, padding_side, layer, span):
    model, tokenizer = model_and_tokenizer
    short = SAMPLES[0]
    alone = BatchScorer(model, tokenizer, embedding_layer=layer, embedding_span=span).score([short])[0].embedding
    padded = BatchScorer(model, tokenizer, embedding_layer=layer, padding_side=padding_side, embedding_span=span)
    with_long = padded.score([short, SAMPLES[3]])[0].embedding  # the longer sample pads the short one
    assert padded.stats["padded_tokens"] > padded.stats["forward_tokens"]
    torch.testing.assert_close(with_long, alone, atol=1e-5, rtol=1e-5)
    # Oracle: the mean of the chosen hidden state over the conditioned text's scored answer
    # tokens (response) or over all its tokens (text).
    e = encode_sample(tokenizer, *short, 1024)
    with torch.no_grad():
        states = model(input_ids=torch.tensor([e.cond_ids]), output_hidden_states=True).hidden_states[layer][0]
    tokens = slice(e.cond_start, e.cond_start + e.n_answer) if span == "response" else slice(None)
    torch.testing.assert_close(alone, states[tokens].mean(0), atol=1e-5, rtol=1e-5)


def test_embeddings_can_be_turned_off(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    assert BatchScorer(model, tokenizer, embeddings=False).score(SAMPLES[:2])[0].embedding is None


def test_conditional_only_scores_the_same_l_cond_with_half_the_tokens(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    both = BatchScorer(model, tokenizer, max_length=256, embeddings=False)
    cond = BatchScorer(model, tokenizer, max_length=256, embeddings=False, conditional_only=True)
    for full, alone in zip(both.score(SAMPLES), cond.score(SAMPLES), strict=True):
        assert alone.l_cond == pytest.approx(full.l_cond, abs=1e-4)
        assert alone.n_answer_tokens == full.n_answer_tokens
        assert alone.l_prior is None and alone.ifd is None
    assert cond.stats["forward_tokens"] < both.stats["forward_tokens"]


def test_embedding_layer_out_of_range_is_an_error(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    with pytest.raises(ValueError, match="out of range"):
        BatchScorer(model, tokenizer, embedding_layer=5)


# --- PEFT-wrapped models --------------------------------------------------------------------------

def test_lora_wrapped_model_scores_like_its_full_logits(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(load_model(str(tiny_model_dir)), lora).eval()
    base = load_model(str(tiny_model_dir))
    got = BatchScorer(model, tokenizer).score(SAMPLES[:2])
    untuned = BatchScorer(base, tokenizer).score(SAMPLES[:2])
    for (prompt, response), g, u in zip(SAMPLES[:2], got, untuned, strict=True):
        l_cond, l_prior, ifd, _ = reference_ifd(model, tokenizer, prompt, response, 1024)
        assert (g.l_cond, g.l_prior) == pytest.approx((l_cond, l_prior), abs=1e-4)
        assert abs(g.l_cond - u.l_cond) > 1e-3  # the adapter really took part


# --- planning -------------------------------------------------------------------------------------

def test_micro_batches_respect_the_token_budget_and_cover_every_sequence():
    lengths = [5, 300, 17, 17, 90, 1, 64, 64, 64, 200, 1000]
    batches = plan_micro_batches(lengths, token_budget=256, max_seqs=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or (len(b) * width <= 256 and len(b) <= 3)
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


def test_actor_plan_uses_one_gpu_per_actor_or_fills_the_cpus():
    gpu = plan_actors(ScoringConfig(), {"CPU": 32, "GPU": 4})
    assert (gpu.num_actors, gpu.num_gpus, gpu.device) == (4, 1, "cuda")
    two = plan_actors(ScoringConfig(), {"CPU": 2})
    assert (two.num_actors, two.threads, two.num_cpus, two.device) == (2, 1, 1, "cpu")
    big = plan_actors(ScoringConfig(), {"CPU": 64})
    assert (big.num_actors, big.threads) == (8, 8)
    wide = plan_actors(ScoringConfig(cpus_per_actor=2), {"CPU": 2})
    assert (wide.num_actors, wide.threads, wide.num_cpus) == (1, 2, 2)
    forced = plan_actors(ScoringConfig(num_actors=2, cpus_per_actor=1), {"CPU": 2})
    assert (forced.num_actors, forced.threads) == (2, 1)
    from raysel.config import ConfigError

    with pytest.raises(ConfigError, match="needs 6 CPUs"):
        plan_actors(ScoringConfig(num_actors=3, cpus_per_actor=2), {"CPU": 4})


def test_actor_plan_on_an_autoscaling_cluster_asks_for_gpus_before_any_node_has_one():
    from raysel.config import ConfigError

    head_only = {"CPU": 0}  # cluster.yaml's head schedules nothing; no GPU node has started yet
    assert plan_actors(ScoringConfig(), head_only).device == "cpu"  # auto sees no GPU
    grow = plan_actors(ScoringConfig(use_gpu="yes", max_actors=16), head_only)
    assert (grow.num_actors, grow.max_actors, grow.num_gpus, grow.device) == (1, 16, 1, "cuda")
    assert plan_actors(ScoringConfig(use_gpu="no"), {"CPU": 8, "GPU": 4}).device == "cpu"
    assert plan_actors(ScoringConfig(), {"CPU": 8, "GPU": 4}).max_actors == 4  # a fixed pool by default
    with pytest.raises(ConfigError, match="below the pool's starting size"):
        plan_actors(ScoringConfig(max_actors=2), {"CPU": 8, "GPU": 4})


def test_a_pool_that_may_grow_keeps_enough_batches_in_flight_for_ray_data_to_grow_it():
    import ray

    from raysel.actor_map import tasks_in_flight

    fixed = plan_actors(ScoringConfig(), {"CPU": 8, "GPU": 4})
    grow = plan_actors(ScoringConfig(max_actors=8), {"CPU": 8, "GPU": 4})
    assert tasks_in_flight(fixed) == 1
    # Ray Data grows a pool when tasks in flight per actor reach this threshold
    assert tasks_in_flight(grow) >= ray.data.DataContext.get_current().autoscaling_config.actor_pool_util_upscaling_threshold


# --- priors, templates and overflow ---------------------------------------------------------------

def _copy_tokenizer(folder, **changes):
    import copy

    tokenizer = copy.deepcopy(load_tokenizer(str(folder)))
    for name, value in changes.items():
        setattr(tokenizer, name, value)
    return tokenizer


def test_plain_prior_without_bos_scores_the_same_answer_tokens(tiny_model_dir):
    """A Qwen2-style tokenizer (no BOS): l_cond and l_prior average the same answer tokens, the
    prior's first one included, and a one-token answer is scored, not invalid."""
    model, tokenizer = load_model(str(tiny_model_dir)), _copy_tokenizer(tiny_model_dir, bos_token=None)
    assert tokenizer.bos_token_id is None
    scores = BatchScorer(model, tokenizer, prior_context="plain", vocab_chunk=100).score(SAMPLES)
    for (prompt, response), got in zip(SAMPLES, scores, strict=True):
        cond = render(tokenizer, prompt, response, 1024)
        answer = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert cond.input_ids[cond.answer_start:cond.answer_start + len(answer)] == answer  # same tokens
        n = len(answer)  # the plain prior has no end-of-turn token: every answer token, no more
        assert got.status == "scored" and got.n_answer_tokens == n
        assert got.l_cond == pytest.approx(answer_nll(model, cond.input_ids, cond.answer_start, n), abs=1e-4)
        prior = [tokenizer.eos_token_id, *answer]
        assert got.l_prior == pytest.approx(answer_nll(model, prior, 1, n), abs=1e-4)


# Llama-2, Gemma and Mistral's official templates raise on anything but user/assistant alternation.
ALTERNATING_TEMPLATE = (
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if 'FORBIDDEN' in m['content'] %}{{ raise_exception('this template refuses that word') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
)


def test_template_that_demands_alternating_roles_falls_back_to_the_plain_prior(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tokenizer = _copy_tokenizer(tiny_model_dir, chat_template=ALTERNATING_TEMPLATE)
    samples = [SAMPLES[0], SAMPLES[3], ([{"role": "user", "content": "Say FORBIDDEN"}], "No."),
               ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "Hello.")]
    scorer = BatchScorer(model, tokenizer)  # prior_context="template", the default
    assert scorer.prior_context == "plain" and "roles must alternate" in scorer.prior_fallback
    got = scorer.score(samples)
    want = BatchScorer(model, tokenizer, prior_context="plain").score(samples[:2])
    for g, w in zip(got[:2], want, strict=True):
        assert g.status == "scored" and g.ifd == pytest.approx(w.ifd, abs=1e-6)
    # a template error on one row makes that row invalid, with the template's own words
    assert got[2].status == got[3].status == "invalid"
    assert got[2].reason.startswith("chat template error") and "refuses that word" in got[2].reason
    assert "roles must alternate" in got[3].reason  # a system turn is refused by this template


def test_the_scoring_actor_records_which_prior_it_used(tiny_model_dir, tmp_path):
    import shutil

    import pyarrow as pa

    from raysel.config import Config
    from raysel.scoring.stage import Scorer

    folder = shutil.copytree(tiny_model_dir, tmp_path / "alternating")
    _copy_tokenizer(tiny_model_dir, chat_template=ALTERNATING_TEMPLATE).save_pretrained(folder)
    rows = pa.table({"id": ["a"], "prompt": [SAMPLES[0][0]], "response": [SAMPLES[0][1]]})
    out = Scorer(str(folder), Config(), threads=1, device="cpu")(rows)
    assert out["status"].to_pylist() == ["scored"]
    assert out["prior_used"][0].as_py().startswith("plain (fallback: the chat template cannot render")
    assert Scorer(str(tiny_model_dir), Config(), threads=1, device="cpu")(rows)["prior_used"].to_pylist() == \
        ["template"]


def test_ifd_past_the_float_range_is_infinite_not_an_error():
    from raysel.scoring.batch import ifd_ratio
    from raysel.selection.base import IFD_INVALID, ifd_eligibility

    assert ifd_ratio(1.5, 1.5) == 1.0 and ifd_ratio(0.0, 2.0) == pytest.approx(math.exp(-2))
    assert ifd_ratio(800.0, 1.0) == math.inf
    eligible, reason = ifd_eligibility([ifd_ratio(800.0, 1.0)], 1.0)
    assert not eligible[0] and reason[0] == IFD_INVALID
