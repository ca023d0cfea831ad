"""IFD losses and pooled embeddings for a list of samples, in batched forward passes (ALGORITHMS.md 1.1).

Plain torch, no Ray: the Ray actor in `raysel.scoring.stage` wraps `BatchScorer`.

    scorer = BatchScorer(model, tokenizer, max_length=1024)
    results = scorer.score([(prompt_turns, response), ...])   # one SampleScore per sample, in order

How it stays fast:
- The conditioned and the prior sequences of every sample go into one pool, sorted by length,
  and are cut into forward micro-batches under a padded-token budget: little padding, big matmuls.
- The LM head and the cross-entropy run on the answer positions only, a chunk at a time: the
  full [batch, sequence, vocabulary] logits tensor never exists.
- With right padding no attention mask (and no position ids) is passed: causal attention never
  lets a real token see the padding after it, so the fast `is_causal` attention path is exact.
- The embedding is pooled from the same forward pass (one selected hidden-state layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raysel.templates import render, render_plain

# Render without a limit first, so that truncation can be seen and reported.
_NO_LIMIT = 1 << 62

EMPTY_ANSWER = "empty answer"


@dataclass(frozen=True)
class Encoded:
    """One sample's two token sequences and the answer tokens to score in each."""

    cond_ids: list[int]  # [system?, user: q, assistant: a], cut at max_length
    cond_start: int  # first scored answer token in cond_ids
    prior_ids: list[int]  # the answer without the user turn, cut after the scored tokens
    prior_start: int
    n_answer: int  # answer tokens scored in both sequences (0: invalid)
    truncated: bool  # fewer answer tokens scored than the answer has
    reason: str | None = None  # why the sample cannot be scored


@dataclass(frozen=True)
class SampleScore:
    status: str  # "scored" | "invalid"
    reason: str | None
    l_cond: float | None
    l_prior: float | None
    ifd: float | None
    n_answer_tokens: int
    truncated: bool
    embedding: torch.Tensor | None = None  # float32 [hidden], masked mean over the conditioned text


def encode_sample(tokenizer, prompt: list[dict], response: str, max_length: int,
                  prior_context: str = "template") -> Encoded:
    """Tokenise the conditioned and prior texts; n answer tokens survive in the conditioned text,
    and the same number of leading answer tokens is scored in the prior text.

    The plain prior (the bare answer) has no end-of-turn token, so there n also stops before
    the conditioned text's end-of-turn: both texts score the answer text only, as Cherry-LLM does."""
    cond = render(tokenizer, prompt, response, _NO_LIMIT)
    if prior_context == "template":
        prior = render(tokenizer, [], response, _NO_LIMIT)
    elif prior_context == "plain":
        prior = render_plain(tokenizer, response, _NO_LIMIT)
    else:
        raise ValueError(f"prior_context must be 'template' or 'plain', got {prior_context!r}")
    # Position t predicts token t + 1, so token 0 can never be scored.
    cond_start, prior_start = max(cond.answer_start, 1), max(prior.answer_start, 1)
    n_cond = max(0, min(cond.answer_end, max_length) - cond_start)
    n_prior = max(0, min(prior.answer_end, max_length) - prior_start)
    n = min(n_cond, n_prior)
    reason = None
    if cond.answer_end <= cond_start or prior.answer_end <= prior_start:
        reason = EMPTY_ANSWER
    elif n == 0:
        reason = f"no answer token within max_length={max_length} (the prompt takes {cond_start} tokens)"
    truncated = n > 0 and max(cond.answer_end, prior.answer_end) > max_length
    return Encoded(cond_ids=cond.input_ids[:max_length], cond_start=cond_start,
                   prior_ids=prior.input_ids[: prior_start + n], prior_start=prior_start,
                   n_answer=n, truncated=truncated, reason=reason)


@dataclass(frozen=True)
class _Seq:
    """One sequence of the forward pool: which sample, which text, which tokens to score."""

    ids: list[int]
    start: int
    n: int
    sample: int
    is_cond: bool


def plan_micro_batches(lengths: list[int], token_budget: int, max_seqs: int,
                       overhead_tokens: int = 128) -> list[list[int]]:
    """Sequence indices, longest first, in micro-batches of at most `token_budget` padded tokens.

    Sorted by length, a micro-batch is a run of neighbours; the cut points minimise padded tokens
    plus `overhead_tokens` per forward pass (dynamic programming over the sorted lengths), so a
    few long sequences do not pad many short ones. A sequence longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted sequences
    cut = [0] * (n + 1)
    for i in range(n):  # a micro-batch starting at i is as wide as sizes[i]
        limit = min(n, i + max(1, min(max_seqs, token_budget // max(1, sizes[i]))))
        for j in range(i + 1, limit + 1):
            cost = best[i] + (j - i) * sizes[i] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j]: j])
        j = cut[j]
    return batches[::-1]


def causal_lm_parts(model):
    """(decoder body returning hidden states, LM head, final logit softcap or None) of a causal LM,
    PEFT-wrapped or not."""
    if hasattr(model, "get_base_model"):  # peft.PeftModel: the LoRA layers live inside the base
        model = model.get_base_model()
    body = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if body is None or head is None:
        raise ValueError(f"{type(model).__name__} is not a causal LM with a separate body and LM head")
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return body, head, softcap


class BatchScorer:
    """Per-sample l_cond, l_prior, IFD and (optionally) a pooled embedding, in batched passes."""

    def __init__(self, model, tokenizer, max_length: int = 1024, prior_context: str = "template",
                 embeddings: bool = True, embedding_layer: int = -1, token_budget: int = 8192,
                 max_seqs: int = 256, lm_head_chunk: int = 2048, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.model, self.tokenizer = model, tokenizer
        self.body, self.head, self.softcap = causal_lm_parts(model)
        self.max_length, self.prior_context = max_length, prior_context
        self.embeddings, self.padding_side = embeddings, padding_side
        self.layer = self._resolve_layer(embedding_layer)
        self.token_budget, self.max_seqs, self.lm_head_chunk = token_budget, max_seqs, lm_head_chunk
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = next(model.parameters()).device
        self.hidden_size = self.body.config.hidden_size
        self.stats = {"forward_tokens": 0, "padded_tokens": 0, "lm_head_positions": 0}

    def _resolve_layer(self, layer: int) -> int | None:
        """Hidden-state index (0: embeddings, i: after layer i); None: the last, final-normed state."""
        n_layers = self.body.config.num_hidden_layers
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(f"embedding_layer {layer} is out of range for a model with {n_layers} layers")
        layer %= n_layers + 1
        return None if layer == n_layers else layer

    # --- public -------------------------------------------------------------------------

    def score(self, samples: list[tuple[list[dict], str]]) -> list[SampleScore]:
        encoded = [encode_sample(self.tokenizer, p, r, self.max_length, self.prior_context) for p, r in samples]
        return self.score_encoded(encoded)

    @torch.inference_mode()
    def score_encoded(self, encoded: list[Encoded]) -> list[SampleScore]:
        seqs = []
        for i, e in enumerate(encoded):
            if e.reason is None:
                seqs.append(_Seq(e.cond_ids, e.cond_start, e.n_answer, i, True))
                seqs.append(_Seq(e.prior_ids, e.prior_start, e.n_answer, i, False))
        nll_sums = torch.zeros(len(seqs), dtype=torch.float64)
        pooled = {}
        for batch in plan_micro_batches([len(s.ids) for s in seqs], self.token_budget, self.max_seqs):
            sums, emb = self._forward([seqs[i] for i in batch])
            nll_sums[batch] = sums
            pooled.update({batch[j]: vec for j, vec in emb.items()})
        return self._collect(encoded, seqs, nll_sums, pooled)

    # --- one micro-batch ----------------------------------------------------------------

    def _forward(self, seqs: list[_Seq]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Summed answer NLL per sequence, and pooled hidden states of the conditioned ones."""
        ids, mask, offsets = self._pad(seqs)
        width = ids.shape[1]
        self.stats["forward_tokens"] += int(mask.sum())
        self.stats["padded_tokens"] += ids.numel()
        kwargs = {"use_cache": False}
        if self.padding_side == "left":
            kwargs.update(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        # Right padding needs neither: causal attention never lets a real token see the padding
        # after it, and default positions are right for real tokens. (Repeated position ids on
        # the padding would make transformers think the batch is packed and build a full mask.)
        if self.embeddings and self.layer is not None:
            kwargs["output_hidden_states"] = [self.layer]  # keeps this one layer only
        out = self.body(input_ids=ids, **kwargs)
        hidden = out.last_hidden_state
        sums = self._answer_nll(hidden.reshape(-1, hidden.shape[-1]), ids.reshape(-1), seqs, offsets, width)
        emb = {}
        if self.embeddings:
            states = hidden if self.layer is None else out.hidden_states[self.layer]
            emb = self._pool(states, mask, [j for j, s in enumerate(seqs) if s.is_cond])
        return sums, emb

    def _pad(self, seqs: list[_Seq]):
        width = max(len(s.ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        offsets = []
        for j, s in enumerate(seqs):
            off = width - len(s.ids) if self.padding_side == "left" else 0
            ids[j, off: off + len(s.ids)] = torch.tensor(s.ids)
            mask[j, off: off + len(s.ids)] = 1
            offsets.append(off)
        return ids.to(self.device), mask.to(self.device), offsets

    def _answer_nll(self, flat_hidden, flat_ids, seqs, offsets, width) -> torch.Tensor:
        """LM head + cross-entropy on answer positions only, `lm_head_chunk` positions at a time.

        Hidden state at position t predicts token t + 1: the states at [start - 1, start + n - 1)
        predict the answer tokens at [start, start + n)."""
        positions, owners = [], []
        for j, s in enumerate(seqs):
            first = j * width + offsets[j] + s.start - 1
            positions.append(torch.arange(first, first + s.n))
            owners.append(torch.full((s.n,), j))
        positions = torch.cat(positions).to(self.device)
        owners = torch.cat(owners).to(self.device)
        targets = flat_ids[positions + 1]
        sums = torch.zeros(len(seqs), dtype=torch.float64, device=self.device)
        for lo in range(0, len(positions), self.lm_head_chunk):
            chunk = slice(lo, lo + self.lm_head_chunk)
            # Logits in the model's dtype, cross-entropy in fp32 (as transformers' own loss does).
            logits = self.head(flat_hidden[positions[chunk]]).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            nll = F.cross_entropy(logits, targets[chunk], reduction="none")
            sums.index_add_(0, owners[chunk], nll.double())
        self.stats["lm_head_positions"] += len(positions)
        return sums.cpu()

    @staticmethod
    def _pool(states, mask, rows: list[int]) -> dict[int, torch.Tensor]:
        """Masked mean over real tokens; `where`, not multiply, so a NaN in a padded slot cannot leak."""
        if not rows:
            return {}
        index = torch.tensor(rows, device=states.device)
        real = mask[index].bool().unsqueeze(-1)
        summed = torch.where(real, states[index].float(), 0.0).sum(1)
        means = (summed / real.sum(1)).cpu()
        return {j: means[k] for k, j in enumerate(rows)}

    # --- per sample ---------------------------------------------------------------------

    @staticmethod
    def _collect(encoded, seqs, nll_sums, pooled) -> list[SampleScore]:
        by_sample: dict[int, dict] = {}
        for k, s in enumerate(seqs):
            entry = by_sample.setdefault(s.sample, {})
            entry["cond" if s.is_cond else "prior"] = float(nll_sums[k]) / s.n
            if s.is_cond:
                entry["embedding"] = pooled.get(k)
        results = []
        for i, e in enumerate(encoded):
            if e.reason is not None:
                results.append(SampleScore("invalid", e.reason, None, None, None, 0, e.truncated))
                continue
            l_cond, l_prior = by_sample[i]["cond"], by_sample[i]["prior"]
            results.append(SampleScore("scored", None, l_cond, l_prior, math.exp(l_cond - l_prior),
                                       e.n_answer, e.truncated, by_sample[i].get("embedding")))
        return results
