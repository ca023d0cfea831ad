"""DaaR's view of a sample: its text, and two vectors from the model's first layers (pure torch).

    encoder = ProbeEncoder(model, tokenizer, probe_layers=3, max_length=512)
    probe, inputs = encoder.encode([render_text(instruction, input, output), ...])

`probe`: the hidden state after the first `probe_layers` decoder layers, averaged over the
text's real tokens (the reference averages over padding too). `inputs`: the mean of the input
token embeddings over the same tokens (no transformer layer at all), the space the domain
centroids live in by default. The layers past `probe_layers` are dropped, never run: the pass
costs about probe_layers / num_layers of a full forward (benchmarks/daar_features.py).
"""

from __future__ import annotations

import numpy as np


def render_text(instruction: str, input: str, output: str) -> str:
    """The one text DaaR embeds, in training and in inference alike (the reference mixes two
    formats). The Input line is left out when there is no input: a line shared by most texts
    would pull every mean towards it."""
    parts = [f"Instruction: {instruction}"]
    if input:
        parts.append(f"Input: {input}")
    parts.append(f"Output: {output}")
    return "\n".join(parts)


def check_probe_layers(model_path: str, probe_layers: int, trust_remote_code: bool = False) -> None:
    """Refuse, before any actor starts, a probe deeper than the model (when its config says)."""
    from pathlib import Path

    from raysel.config import ConfigError

    if not (Path(model_path) / "config.json").exists():
        return  # an adapter or a GGUF file: the actors find out
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if n is not None and not 1 <= probe_layers <= n:
        raise ConfigError(f"daar.probe_layers={probe_layers}: {model_path} has {n} decoder layers")


def truncate_decoder(model, probe_layers: int):
    """The model's decoder stack cut after its first `probe_layers` layers, without the final
    norm or LM head, so its last hidden state is exactly that layer's output. Changes `model`."""
    import torch

    base = getattr(model, "base_model", model)
    if hasattr(base, "get_base_model"):  # a PEFT wrapper: the transformers model inside
        base = base.get_base_model().base_model
    layers_attr = next((n for n in ("layers", "h") if isinstance(getattr(base, n, None), torch.nn.ModuleList)),
                       None)
    norm_attr = next((n for n in ("norm", "ln_f") if hasattr(base, n)), None)
    if layers_attr is None or norm_attr is None:
        raise ValueError(f"{type(base).__name__}: cannot find its decoder layers and final norm "
                         "(supported: Llama-style `layers`/`norm`, GPT-2-style `h`/`ln_f`)")
    layers = getattr(base, layers_attr)
    if not 1 <= probe_layers <= len(layers):
        raise ValueError(f"daar.probe_layers={probe_layers}: the model has {len(layers)} decoder layers")
    setattr(base, layers_attr, torch.nn.ModuleList(layers[:probe_layers]))
    setattr(base, norm_attr, torch.nn.Identity())
    for name in ("num_hidden_layers", "n_layer"):  # some forwards slice the layers by the config
        if hasattr(base.config, name):
            setattr(base.config, name, probe_layers)
    if getattr(base.config, "layer_types", None):
        base.config.layer_types = base.config.layer_types[:probe_layers]
    return base.eval()


def masked_mean(hidden, mask):
    """Mean of hidden [n, t, d] over the positions where mask [n, t] is 1, in float32."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden.float() * mask.float()).sum(dim=1)
    return total / mask.float().sum(dim=1).clamp_min(1.0)


class ProbeEncoder:
    """Texts in, (probe features, input-embedding means) out, both float32 [n, hidden].

    Texts are cut at max_length tokens, sorted by length and run in micro-batches of at most
    `token_budget` padded tokens, padded on the right (a causal model's real tokens never see
    the padding after them, so the features do not depend on the batch)."""

    def __init__(self, model, tokenizer, probe_layers: int, max_length: int, token_budget: int = 4096):
        self.embed = model.get_input_embeddings()
        self.body = truncate_decoder(model, probe_layers)
        self.tokenizer, self.max_length, self.token_budget = tokenizer, max_length, token_budget
        self.hidden_size = self.embed.weight.shape[1]
        self.device = self.embed.weight.device

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        probe = np.zeros((len(ids), self.hidden_size), dtype=np.float32)
        inputs = np.zeros_like(probe)
        with torch.inference_mode():
            for batch in self._micro_batches(ids):
                p, e = self._forward([ids[i] for i in batch])
                probe[batch], inputs[batch] = p, e
        return probe, inputs

    def _micro_batches(self, ids: list[list[int]]) -> list[list[int]]:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches, current = [], []
        for i in order:  # ascending lengths: the newest text is the longest of its batch
            if current and (len(current) + 1) * len(ids[i]) > self.token_budget:
                batches.append(current)
                current = []
            current.append(i)
        return batches + ([current] if current else [])

    def _forward(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            input_ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.body(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        probe = masked_mean(hidden, mask)
        inputs = masked_mean(self.embed(input_ids), mask)
        return probe.cpu().numpy(), inputs.cpu().numpy()
