"""DaaR's selector (docs/methods.md, DaaR): the highest predicted reward, over the whole pool or
within each pseudo-domain's quota.

    options: mode "overall" | "per_domain"; shares {domain: share} (per_domain; default: each
    pseudo-domain's share of the candidates)

The ranking is the selection (best reward first), then every other row by reward. Ties go to the
lower id.
"""

from __future__ import annotations

import numpy as np

from raysel.config import ConfigError, DaaRConfig
from raysel.selection.base import Request, Selection, no_duplicates, tie_ranks

REWARD_INVALID = "reward invalid"


def daar_options(d: DaaRConfig) -> dict:
    """The selector's settings from the config: overall or per pseudo-domain, and the quotas' shares."""
    from raysel.daar.domains import domain_name

    names = [domain_name(n) for n in d.domains]
    if d.domain_shares and len(d.domain_shares) != len(names):
        raise ConfigError(f"daar.domain_shares: one share per domain named in daar.domains, in that order; "
                          f"got {len(d.domain_shares)} shares for {names}")
    return {"mode": d.select, "shares": dict(zip(names, d.domain_shares, strict=False))}


def select_daar(req: Request) -> Selection:
    reward = np.asarray(req.scores["reward"], dtype=np.float64)
    valid = np.isfinite(reward)
    reason = np.full(req.n, None, dtype=object)
    reason[~valid] = REWARD_INVALID
    candidates = np.flatnonzero(valid)
    by_reward = candidates[np.lexsort((tie_ranks(req.ids)[candidates], -reward[candidates]))]
    k = min(req.k, len(by_reward))
    domains = req.scores.get("pseudo_domain")
    if req.options.get("mode", "overall") == "per_domain":
        picked = _per_domain(by_reward, np.asarray(domains, dtype=object), k, req.options.get("shares") or {})
    else:
        picked = by_reward[:k]
    is_picked = np.zeros(req.n, dtype=bool)
    is_picked[picked] = True
    order = np.concatenate([by_reward[is_picked[by_reward]], by_reward[~is_picked[by_reward]]])
    order = order[:max(req.n_rank, len(picked))].astype(np.int64)
    return Selection("daar", order, len(picked), np.full(len(order), np.nan), reward[order], reason,
                     no_duplicates(req.n), stats={"per_domain": _counts(domains, picked)})


def quotas(available: dict[str, int], k: int, shares: dict[str, float]) -> dict[str, int]:
    """Rows per domain summing to min(k, rows available): k split by `shares` (default: by what
    each domain has), whole rows first, then one each by the largest remainder (ties by name);
    a quota past what a domain has goes to the others."""
    k = min(k, sum(available.values()))
    weight = {d: float(shares.get(d, 0.0)) if shares else float(n) for d, n in available.items()}
    quota = dict.fromkeys(available, 0)
    while (left := k - sum(quota.values())) > 0:
        open_domains = [d for d in available if quota[d] < available[d]]
        w = {d: weight[d] for d in open_domains}
        if sum(w.values()) <= 0:  # only domains without a share have rows left: share alike
            w = dict.fromkeys(open_domains, 1.0)
        exact = {d: left * w[d] / sum(w.values()) for d in open_domains}
        add = {d: min(int(exact[d]), available[d] - quota[d]) for d in open_domains}
        spare = left - sum(add.values())
        for d in sorted(open_domains, key=lambda d: (int(exact[d]) - exact[d], d)):  # largest remainder
            if spare and quota[d] + add[d] < available[d]:
                add[d], spare = add[d] + 1, spare - 1
        for d, n in add.items():
            quota[d] += n
    return quota


def _per_domain(by_reward: np.ndarray, domains: np.ndarray, k: int, shares: dict) -> np.ndarray:
    names = domains[by_reward]
    available = {str(d): int((names == d).sum()) for d in dict.fromkeys(names.tolist())}
    quota = quotas(available, k, shares)
    return np.concatenate([by_reward[names == d][:quota[d]] for d in available] or [np.zeros(0, np.int64)])


def _counts(domains, picked: np.ndarray) -> dict[str, int]:
    if domains is None:
        return {}
    values, counts = np.unique(np.asarray(domains, dtype=object)[picked].astype(str), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))
