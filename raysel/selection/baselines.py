"""Baselines behind the same interface (docs/methods.md, Baselines): random, top-k IFD, full.

(k-center, the embedding baseline, shares the embedding greedy: see embedding.select_kcenter.)
"""

from __future__ import annotations

import numpy as np

from raysel.selection.base import Request, Selection, ifd_eligibility, no_duplicates, no_reasons, tie_ranks


def select_random(req: Request) -> Selection:
    """A seeded random ranking of every sample (IFD unused). The shuffle starts from the id order,
    so the result depends on the seed and the ids, not on the order the inputs came in."""
    by_id = np.argsort(tie_ranks(req.ids), kind="stable")
    order = by_id[np.random.default_rng(req.seed).permutation(req.n)][:req.n_rank]
    nan = np.full(len(order), np.nan)
    return Selection("random", order.astype(np.int64), min(req.k, len(order)), nan, nan.copy(),
                     no_reasons(req.n), no_duplicates(req.n))


def select_ifd(req: Request) -> Selection:
    """Top-k IFD below ifd_max: highest IFD first, ties by id. The loop decides whose IFD: the base
    model's, scored once (`ifd_static`, as Superfiltering / Cherry-LLM), or each round's (`ifd`)."""
    eligible, reason = ifd_eligibility(req.ifd, req.ifd_max)
    candidates = np.flatnonzero(eligible)
    ifd = np.asarray(req.ifd, dtype=np.float64)
    order = candidates[np.lexsort((tie_ranks(req.ids)[candidates], -ifd[candidates]))][:req.n_rank]
    return Selection("ifd", order.astype(np.int64), min(req.k, len(order)), np.full(len(order), np.nan),
                     ifd[order], reason, no_duplicates(req.n))


def select_full(req: Request) -> Selection:
    """No selection: every sample, in id order (k is ignored)."""
    order = np.argsort(tie_ranks(req.ids), kind="stable").astype(np.int64)
    nan = np.full(req.n, np.nan)
    return Selection("full", order, req.n, nan, nan.copy(), no_reasons(req.n), no_duplicates(req.n))
