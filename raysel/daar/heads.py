"""DaaR's two heads on the probe features (pure torch; docs/methods.md, DaaR).

    heads, stats = train_heads(features, labels, n_domains, HeadOptions(), seed=0)
    logits, reward = heads(torch.from_numpy(x))

The domain head learns the pseudo-labels (cross-entropy); the reward head learns, from the same
features, the entropy of the domain head's softmax (MSE): a sample the domain head sees between
domains earns a high reward. Features are standardised with the training split's mean and
standard deviation, kept in the heads: early-layer hidden states have a few dimensions hundreds
of times larger than the rest, which would otherwise dominate the first layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


def mlp(width: int, outputs: int) -> nn.Sequential:
    """d -> 2d -> d -> d/2 -> 256 -> outputs, ReLU between (ALGORITHMS.md 2.3)."""
    sizes = [width, 2 * width, width, max(1, width // 2), 256]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(256, outputs))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum p ln p per row, in [0, ln D]; 0 ln 0 counts as 0."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)


class Heads(nn.Module):
    def __init__(self, width: int, n_domains: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.domain = mlp(width, n_domains)
        self.reward = mlp(width, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(domain logits [n, D], predicted reward [n])."""
        x = (features.float() - self.mean) / self.std
        return self.domain(x), self.reward(x).squeeze(-1)

    @torch.inference_mode()
    def score(self, features: np.ndarray, batch: int = 4096) -> dict[str, np.ndarray]:
        """Per row: predicted reward, the domain head's entropy and its argmax."""
        self.eval()
        parts = {"reward": [], "entropy": [], "domain": []}
        for start in range(0, len(features), batch):
            logits, reward = self(torch.from_numpy(np.asarray(features[start:start + batch], np.float32)))
            parts["reward"].append(reward.numpy())
            parts["entropy"].append(entropy(logits.softmax(-1)).numpy())
            parts["domain"].append(logits.argmax(-1).numpy())
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


@dataclass(frozen=True)
class HeadOptions:
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-4
    val_fraction: float = 0.03  # the reference's 97/3 split


def train_heads(features: np.ndarray, labels: np.ndarray, n_domains: int, opts: HeadOptions,
                seed: int = 0) -> tuple[Heads, dict]:
    """Fit the domain head, then the reward head on its entropies. Returns the heads and stats:
    validation accuracy and MSE (with the MSE of predicting the training mean, for scale)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(features, np.float32))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    train, val = _split(len(x), opts.val_fraction, seed)
    heads = Heads(x.shape[1], n_domains)
    heads.mean.copy_(x[train].mean(0))
    heads.std.copy_(x[train].std(0, unbiased=False).clamp_min(1e-6))
    domain_loss = _fit(heads, "domain", x[train], y[train], nn.functional.cross_entropy, opts, seed)
    with torch.inference_mode():
        target = entropy(heads(x)[0].softmax(-1))
    reward_loss = _fit(heads, "reward", x[train], target[train], nn.functional.mse_loss, opts, seed + 1)
    with torch.inference_mode():
        logits, reward = heads(x)
    accuracy = (logits.argmax(-1) == y).float()
    stats = {
        "n_train": len(train), "n_val": len(val), "domain_train_loss": domain_loss,
        "reward_train_loss": reward_loss,
        "domain_train_accuracy": _mean(accuracy[train]), "domain_val_accuracy": _mean(accuracy[val]),
        "reward_val_mse": _mean((reward[val] - target[val]) ** 2),
        "reward_val_mse_of_mean": _mean((target[train].mean() - target[val]) ** 2),
        "entropy_mean": _mean(target), "entropy_max_possible": math.log(n_domains),
    }
    return heads.eval(), stats


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_val = min(n - 1, max(1, round(n * val_fraction))) if n > 1 else 0
    return order[n_val:], order[:n_val]


def _fit(heads: Heads, part: str, x, target, loss_fn, opts: HeadOptions, seed: int) -> float:
    """Mini-batch Adam on one head; the other stays as it is. Returns the last epoch's mean loss."""
    module = getattr(heads, part)
    optimizer = torch.optim.Adam(module.parameters(), lr=opts.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    heads.train()
    last = float("nan")
    for _ in range(opts.epochs):
        total = 0.0
        for batch in torch.randperm(len(x), generator=generator).split(opts.batch_size):
            logits, reward = heads(x[batch])
            loss = loss_fn(logits if part == "domain" else reward, target[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        last = total / max(1, len(x))
    heads.eval()
    return round(last, 6)


def _mean(t: torch.Tensor) -> float | None:
    return round(float(t.mean()), 6) if t.numel() else None


def save_heads(heads: Heads, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(path))


def load_heads(path: str | Path) -> Heads:
    """Plain tensors (safetensors): nothing is unpickled."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    heads = Heads(state["mean"].shape[0], state["domain.8.weight"].shape[0])
    heads.load_state_dict(state)
    return heads.eval()
