"""Integer budget allocation: split a whole number of KV entries among heads (or layers) in
proportion to weights, never giving one more than it holds, and summing exactly to the total."""

from __future__ import annotations

import torch


class BudgetError(ValueError):
    """A budget that cannot be honoured (more entries asked for than exist, negative weights)."""


def allocate(total: int, weights: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """Integers (same shape as `weights`) proportional to `weights`, each at most its cap, summing
    to `total`: water-filling (a capped share's excess goes to the others), then largest remainders
    (ties to the lower index). All-zero weights split evenly."""
    shape = weights.shape
    weights, caps = weights.double().flatten(), caps.long().flatten().expand(weights.numel())
    if bool((weights < 0).any()):
        raise BudgetError("allocation weights must be non-negative")
    if total < 0 or total > int(caps.sum()):
        raise BudgetError(f"cannot allocate {total} entries among holders of {int(caps.sum())} in all")
    share = torch.zeros_like(weights)
    free = caps > 0
    while True:
        w = torch.where(free, weights, 0.0)
        if float(w.sum()) == 0.0:
            w = free.double()
        trial = share + (total - share.sum()) * w / w.sum()
        over = free & (trial > caps)
        if not bool(over.any()):
            share = torch.where(free, trial, share)
            break
        share = torch.where(over, caps.double(), share)
        free &= ~over
    out = share.floor().long().clamp_max(caps)
    short = total - int(out.sum())
    room = torch.where(out < caps, share - out, torch.tensor(-1.0, dtype=share.dtype))
    order = torch.argsort(-room, stable=True)[:short]
    out[order] += 1
    return out.view(shape)


def spread_by_score(scores: torch.Tensor, uniform_share: float) -> torch.Tensor:
    """Allocation weights (same shape as the non-negative `scores`): `uniform_share` of the mass spread evenly,
    the rest in proportion to the scores (evenly too when every score is zero). SparseMM's head budgets."""
    s = scores.double()
    even = torch.full_like(s, 1.0 / s.numel())
    return uniform_share * even + (1 - uniform_share) * (s / s.sum() if float(s.sum()) > 0 else even)
