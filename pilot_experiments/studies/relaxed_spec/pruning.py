"""SpecVLM-style visual pruning for the draft model (https://arxiv.org/abs/2508.16201).

The target scores every visual token by the attention the prompt's text (the question after the
pictures) pays it during prefill, averaged over layers, heads and text queries. The draft then
reads a pruned prompt: all text tokens, the best-scored visual tokens for part of the budget, and
evenly spaced picks among the remaining visual tokens for the rest. Kept tokens keep their
original positions, so the draft's RoPE distances match the full prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from pilot_experiments.kvcache import VISUAL
from pilot_experiments.model import Inputs


class PruningError(ValueError):
    """A pruning request that cannot work (ratio outside [0, 1), prompt without visual tokens)."""


def text_to_visual_scores(attn: list[torch.Tensor], inputs: Inputs) -> torch.Tensor:
    """Mean attention from the text after the pictures to each visual token.

    attn: per layer (1, heads, T, T) weights from a prefill with need_attn=True; returns
    (n_visual,) scores in the prompt order of the visual tokens."""
    modality = inputs.modality[0]
    visual = (modality == VISUAL).nonzero()[:, 0]
    if len(visual) == 0:
        raise PruningError("the prompt holds no visual tokens to score")
    queries = torch.arange(int(visual[-1]) + 1, inputs.length, device=modality.device)
    queries = queries[modality[queries] != VISUAL]
    if len(queries) == 0:
        raise PruningError("the prompt has no text after its visual tokens to score them with")
    stacked = torch.stack([a[0][:, queries][:, :, visual] for a in attn])  # (layers, heads, queries, n_visual)
    return stacked.float().mean(dim=(0, 1, 2))


@dataclass(frozen=True)
class VisualPruning:
    """Drop `ratio` of the visual tokens from the draft's prompt: `top_share` of the kept budget goes
    to the highest-scored tokens, the rest to evenly spaced picks among the others (SpecVLM's two
    stages, https://arxiv.org/abs/2508.16201)."""

    ratio: float = 0.9
    top_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise PruningError(f"pruning ratio must lie in [0, 1), got {self.ratio}")
        if not 0.0 <= self.top_share <= 1.0:
            raise PruningError(f"top_share must lie in [0, 1], got {self.top_share}")

    def keep(self, scores: torch.Tensor) -> torch.Tensor:
        """Sorted indices (into the visual tokens) of those the draft keeps; scores: (n_visual,)."""
        n = scores.shape[0]
        budget = max(1, round(n * (1.0 - self.ratio)))
        if budget >= n:
            return torch.arange(n, device=scores.device)
        n_top = round(budget * self.top_share)
        top = scores.topk(n_top).indices if n_top else scores.new_zeros(0, dtype=torch.long)
        rest = torch.ones(n, dtype=torch.bool, device=scores.device)
        rest[top] = False
        others = rest.nonzero()[:, 0]
        picks = torch.linspace(0, len(others) - 1, budget - n_top, device=scores.device).round().long()
        return torch.cat([top, others[picks]]).sort().values

    def apply(self, inputs: Inputs, scores: torch.Tensor) -> Inputs:
        """The draft's pruned prompt: every text token and the kept visual tokens, in order."""
        modality = inputs.modality[0]
        visual = (modality == VISUAL).nonzero()[:, 0]
        keep = torch.ones(inputs.length, dtype=torch.bool, device=modality.device)
        keep[visual] = False
        keep[visual[self.keep(scores)]] = True
        index = keep.nonzero()[:, 0]
        kept = {f.name: getattr(inputs, f.name) for f in fields(inputs)}  # a backend's Inputs may carry more per-token fields
        return type(inputs)(**{name: None if t is None else t[:, index] for name, t in kept.items()})
