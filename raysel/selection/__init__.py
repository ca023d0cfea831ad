"""Selection: which samples to fine-tune on, chosen by name from a registry of pure selectors.

    from raysel.selection import select
    sel = select("iterit", ifd, k=1000, n_rank=3000, ids=ids, features=tfidf_rows, gamma=0.1)
    sel.selected            # indices of the k picks, best first
    sel.order, sel.score    # the ranking continued to n_rank (the re-score pool), with score parts

Selectors: iterit (IFD x n-gram diversity, lazy greedy), embedding (IFD x embedding diversity, FAISS,
de-duplication), daar (predicted reward, overall or per pseudo-domain), random, ifd and ifd_static (top-k IFD), full, kcenter. The stage that reads scores and writes
round-R/selection.parquet is raysel.selection.stage.select_round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from raysel.selection.base import Quota, Request, Selection, apply_quota
from raysel.selection.baselines import select_full, select_ifd, select_random
from raysel.selection.daar import select_daar
from raysel.selection.embedding import select_embedding, select_kcenter
from raysel.selection.greedy import select_iterit

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Selector:
    """A selector and what it needs, declared once: the stage reads (and the loops compute) only that."""

    rank: Callable[[Request], Selection]
    scores: tuple[str, ...] = ()  # the score columns it ranks on (IterIT's scoring stage, DaaR's reward stage)
    needs_features: bool = False  # response TF-IDF rows
    needs_embeddings: bool = False  # pooled hidden states, from IterIT's scoring stage
    greedy: bool = False  # picks depend on the picks before: it consults the quotas pick by pick

    @property
    def needs_scoring(self) -> bool:
        """Whether the IFD scoring stage must run first."""
        return "ifd" in self.scores or self.needs_embeddings


SELECTORS: dict[str, Selector] = {
    "iterit": Selector(select_iterit, scores=("ifd",), needs_features=True, greedy=True),
    "embedding": Selector(select_embedding, scores=("ifd",), needs_embeddings=True, greedy=True),
    "daar": Selector(select_daar, scores=("reward", "pseudo_domain")),
    "random": Selector(select_random),
    "ifd": Selector(select_ifd, scores=("ifd",)),  # on each round's scores: IterIT's IFD-only ablation
    "ifd_static": Selector(select_ifd, scores=("ifd",)),  # on the base model's scores, every round
    "full": Selector(select_full),
    "kcenter": Selector(select_kcenter, needs_embeddings=True, greedy=True),
}

__all__ = ["SELECTORS", "Request", "Selection", "Selector", "get_selector", "select", "selector_name"]


def get_selector(name: str) -> Selector:
    try:
        return SELECTORS[name]
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; choose one of: {', '.join(SELECTORS)}") from None


def selector_name(method: str, diversity: str = "tfidf") -> str:
    """The registry name for a config: iterit with embedding diversity is the `embedding` selector."""
    return "embedding" if method == "iterit" and diversity == "embedding" else method


def select(name: str, ifd, k: int, n_rank: int | None = None, *, ids, features=None, embeddings=None,
           scores: dict | None = None, gamma: float = 0.1, ifd_max: float = 1.0,
           dedup_threshold: float | None = None, seed: int = 0, options: dict | None = None,
           groups=None, quotas: dict | None = None) -> Selection:
    """Rank samples with the selector `name`; the first k of the ranking (up to n_rank >= k) are selected.
    `scores`: every named score array (aligned with ids) for selectors that rank on more than IFD;
    `options`: a selector's own settings (daar: mode, shares, domains); `groups` and `quotas`:
    mixture quotas (a label per sample; label -> share of k or count), which every selector honours."""
    selector = get_selector(name)
    ids = np.asarray(ids, dtype=object)
    ifd = np.full(len(ids), np.nan) if ifd is None else np.asarray(ifd, dtype=np.float64)
    if len(ifd) != len(ids):
        raise ValueError(f"ifd has {len(ifd)} values but there are {len(ids)} ids")
    if k < 0 or (n_rank is not None and n_rank < 0):
        raise ValueError(f"k and n_rank must be non-negative, got k={k}, n_rank={n_rank}")
    n_rank = max(int(k), int(n_rank if n_rank is not None else k))
    req = Request(ifd=ifd, k=int(k), n_rank=n_rank, ids=ids, features=features, embeddings=embeddings,
                  gamma=gamma, ifd_max=ifd_max, dedup_threshold=dedup_threshold, seed=seed,
                  scores=dict(scores or {}), options=dict(options or {}), groups=groups, quotas=dict(quotas or {}))
    started = time.perf_counter()
    selection = selector.rank(req) if selector.greedy or not quotas else _within_quotas(selector, req)
    selection.stats["seconds"] = round(time.perf_counter() - started, 3)
    log.info("%s: ranked %d, selected %d of %d in %.1fs", name, len(selection.order), selection.k, len(ids),
             selection.stats["seconds"])
    return selection


def _within_quotas(selector: Selector, req: Request) -> Selection:
    """A ranking that does not depend on its own picks, honouring quotas: rank everything, take
    the first k whose group has room, then cut the ranking to n_rank."""
    n_rank = req.n_rank
    req.n_rank = req.n
    sel = selector.rank(req)
    sel = apply_quota(sel, Quota.of(req.groups, req.quotas, sel.k))  # k: full's is every row
    keep = max(sel.k, min(n_rank, len(sel.order)))
    return Selection(sel.method, sel.order[:keep], sel.k, sel.diversity[:keep], sel.score[:keep], sel.reason,
                     sel.duplicate_of, sel.stats)
