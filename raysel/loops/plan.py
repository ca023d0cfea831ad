"""What a run does, decided before it starts: the budget (how much each round selects and trains)
and each round's plan (what it scores and ranks). Pure: the loops and `raysel select` / `raysel
train` run by hand share it, so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from raysel.config import Config, resolve_k
from raysel.selection import get_selector
from raysel.training.plan import total_steps

SCORED_ONCE = {"ifd_static"}  # scored by the base model in round 0; those scores decide every round


@dataclass(frozen=True)
class Budget:
    k: int  # rows selected, and trained on, per round
    rounds: int
    n_rank: int  # how far each round ranks: the re-score pool's size
    total_steps: int  # optimizer steps of the whole run: one LR schedule spans every round


def plan_budget(cfg: Config, n_valid: int) -> Budget:
    """`full` trains once on every valid row; the others select k of them per round. DaaR ranks
    every row (its reward is one cheap pass); the IterIT family ranks the re-score pool."""
    sel = cfg.selection
    if sel.method == "full":
        k, rounds, n_rank = n_valid, 1, n_valid
    elif sel.method == "daar":
        k, rounds, n_rank = resolve_k(sel.k, n_valid), sel.rounds, n_valid
    else:
        k, rounds = resolve_k(sel.k, n_valid), sel.rounds
        n_rank = min(n_valid, round(cfg.iterit.rescore_factor * k))
    return Budget(k, rounds, n_rank, total_steps(k, rounds, cfg.training))


@dataclass(frozen=True)
class RoundPlan:
    score: bool  # score the candidates this round, with the model as tuned so far
    candidates: list[str] | None  # the rows ranked this round (None: every valid row)
    scores_round: int  # the round whose scores rank them


def plan_round(selector: str, rescore_pool_mode: str, r: int, rescore_pool: list[str] | None) -> RoundPlan:
    """What round r scores and ranks. Round 0 and rescore_pool=all take every valid row, the
    other rounds the re-score pool; ifd_static ranks every row on round 0's scores, every round."""
    if selector in SCORED_ONCE:
        return RoundPlan(score=r == 0, candidates=None, scores_round=0)
    candidates = None if r == 0 or rescore_pool_mode == "all" else rescore_pool
    return RoundPlan(score=get_selector(selector).needs_scoring, candidates=candidates, scores_round=r)
