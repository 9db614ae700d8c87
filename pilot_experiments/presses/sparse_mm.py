"""SparseMM as a kvpress press: each KV head keeps a budget set by how visual it is."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from kvpress import SnapKVPress
from kvpress.utils import compute_n_kept
from torch import nn

from pilot_experiments.studies.hybrid_kv.allocation import allocate, spread_by_score


@dataclass
class SparseMMPress(SnapKVPress):
    """SparseMM (Wang et al., 2025, https://arxiv.org/abs/2506.05344): the few heads that attend to image content
    ("visual heads") keep most of the KV budget; the rest share a small uniform part.

    `compression_ratio` is kvpress's share of the prompt's entries removed; the entries kept over every
    (layer, KV head) are split by `head_scores` (layers, kv_heads), non-negative: `uniform_share` of them evenly,
    the rest in proportion to the scores (`allocation.spread_by_score`, the split `studies.hybrid_kv.SparseMM`
    uses; its `calibrate` computes the scores). Within a head, the entries the prompt's last `window_size` queries attend to most
    are kept (SnapKV's window, kvpress's question-agnostic protocol). Like kvpress's AdaKV press, a head's
    removed entries are masked in attention (`module.masked_key_indices`), so every head stores the full
    prompt: this press measures what the budget split does to answers, not memory. Needs an attention
    implementation kvpress patches (sdpa or flash), not eager.

    Deviations from the paper, named: its head scores come from its own offline calibration, ours from
    whatever `head_scores` is given; within a head, entries are ranked by SnapKV's window (whose own entries
    always rank first); budgets are split over all layers at once.
    """

    head_scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    uniform_share: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.uniform_share <= 1.0:
            raise ValueError(f"uniform_share must lie in [0, 1], got {self.uniform_share}")
        if self.head_scores.dim() != 2 or bool((self.head_scores < 0).any()):
            raise ValueError("head_scores must be a non-negative (layers, kv_heads) tensor")

    def head_budgets(self, length: int) -> torch.Tensor:
        """(layers, kv_heads) entries each head keeps of a `length`-entry prompt."""
        layers, heads = self.head_scores.shape
        total = compute_n_kept(length, self.compression_ratio) * layers * heads
        return allocate(total, spread_by_score(self.head_scores, self.uniform_share), torch.full((layers, heads), length))

    def compress(self, module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 attentions: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compression_ratio == 0:
            return keys, values
        if module.config._attn_implementation == "eager":
            raise ValueError("SparseMMPress masks heads through kvpress's attention patch: load the model with "
                             "attn_implementation='sdpa'")
        _, heads, length, _ = keys.shape
        if self.head_scores.shape[1] != heads or module.layer_idx >= self.head_scores.shape[0]:
            raise ValueError(f"head_scores {tuple(self.head_scores.shape)} do not match the model's layers and its "
                             f"{heads} KV heads")
        budgets = self.head_budgets(length)[module.layer_idx].to(keys.device)  # (kv_heads,)
        scores = self.score(module, hidden_states, keys, values, attentions, kwargs)
        rank = scores.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # 0 = the head's best entry
        removed = rank >= budgets.view(1, -1, 1)
        module.masked_key_indices = torch.nonzero(removed, as_tuple=True)
        return keys, values
