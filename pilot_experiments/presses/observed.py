"""Presses that run the hybrid-kv study's own policies inside kvpress.

kvpress calls a press once per layer, right after that layer's prefill attention. An `ObservedPress` records, per
layer, the attention of the prompt's last `window_size` queries on every prompt entry; after the last layer it
builds the study's `Observation` from them and lets the study's policy (`policy()`) decide what each (layer, KV
head) keeps. The entries a head does not keep are masked in attention (`module.masked_key_indices`, which
kvpress's attention patch honours, as for its AdaKV press): every head still stores the whole prompt, so these
presses measure what a policy's choice does to answers, not memory. Prefill attention is the model's own in
every layer either way, so deciding after the last layer changes nothing a per-layer press would see.

Budgets: kvpress's `compression_ratio` is the share of the prompt's entries removed. The study's policies always
keep text (entries `visual` does not mark; with `visual` None every entry before the window competes), so the
competing entries share what is left: per head, the kept count less the text count. A ratio that leaves fewer
entries than the text holds keeps the text alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from kvpress import BasePress
from kvpress.utils import compute_n_kept
from torch import nn

from pilot_experiments.presses.rope import rotated_queries
from pilot_experiments.studies.hybrid_kv import Observation, VisualBudgetPolicy
from pilot_experiments.studies.hybrid_kv.policies import keep_top_visual


def window_attention(module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, window: int,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(batch, heads, window, length) softmax attention of the last `window` prompt queries on every prompt entry,
    causal within the window, as the model computes it."""
    queries = rotated_queries(module, hidden_states[:, -window:], position_embeddings).float()
    group = queries.shape[1] // keys.shape[1]
    scores = queries @ keys.float().repeat_interleave(group, dim=1).transpose(-1, -2) / math.sqrt(queries.shape[-1])
    length = keys.shape[2]
    future = torch.arange(length, device=keys.device)[None] > torch.arange(length - window, length, device=keys.device)[:, None]
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


@dataclass
class ObservedPress(BasePress):
    """Base of the presses that hand the decision to a study policy (see the module docstring). `visual`
    (batch, prompt length) marks the prompt's image entries; set it before each prompt."""

    compression_ratio: float = 0.0
    window_size: int = 64
    visual: torch.Tensor | None = None
    _layers: int = field(default=0, init=False, repr=False)
    _seen: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.compression_ratio < 1.0:
            raise ValueError(f"compression_ratio must lie in [0, 1), got {self.compression_ratio}")
        if self.window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {self.window_size}")

    def policy(self, budget: float) -> VisualBudgetPolicy:
        """The study policy that keeps the fraction `budget` of the competing entries."""
        raise NotImplementedError

    def post_init_from_model(self, model: nn.Module) -> None:
        self._layers = model.config.get_text_config().num_hidden_layers
        self._seen = {}

    def compress(self, module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 attentions: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compression_ratio == 0:
            return keys, values
        if module.config._attn_implementation == "eager":
            raise ValueError(f"{type(self).__name__} masks entries through kvpress's attention patch: load the model "
                             "with attn_implementation='sdpa'")
        if hidden_states.shape[1] <= self.window_size:
            raise ValueError(f"the prompt ({hidden_states.shape[1]} tokens) must be longer than window_size={self.window_size}")
        attention = window_attention(module, hidden_states, keys, self.window_size, kwargs["position_embeddings"])
        self._seen[module.layer_idx] = (module, attention, keys)
        if len(self._seen) == self._layers:
            layers = [self._seen[i] for i in sorted(self._seen)]
            self._seen = {}
            self.decide([m for m, _, _ in layers], self.observation([a for _, a, _ in layers], keys), [k for _, _, k in layers])
        return keys, values

    def observation(self, attention: list[torch.Tensor], keys: torch.Tensor) -> Observation:
        batch, kv_heads, length, _ = keys.shape
        if self.visual is None:
            competing = torch.ones(batch, length, dtype=torch.bool, device=keys.device)
            competing[:, -self.window_size:] = False
        elif tuple(self.visual.shape) != (batch, length):
            raise ValueError(f"visual has shape {tuple(self.visual.shape)}; it must be (batch, prompt length) = "
                             f"{(batch, length)}: set it for the prompt being compressed")
        else:
            competing = self.visual.to(keys.device, torch.bool)
        if bool((competing.sum(-1) != competing[0].sum()).any()):
            raise ValueError("every prompt in the batch must have as many image entries")
        return Observation(attention, competing[:, None, :].expand(-1, kv_heads, -1), attention[0].shape[1] // kv_heads, tap=None)

    def competing_budget(self, obs: Observation) -> int:
        """Competing entries each head keeps on average."""
        length, competing = obs.visual.shape[-1], int(obs.visual[0, 0].sum())
        return min(competing, max(0, compute_n_kept(length, self.compression_ratio) - (length - competing)))

    def head_keep(self, obs: Observation) -> list[torch.Tensor]:
        """Per layer, the (batch, kv_heads, length) mask of entries kept."""
        kept = self.competing_budget(obs)
        if kept == 0:
            return [~obs.visual] * obs.layers
        policy = self.policy(kept / int(obs.visual[0, 0].sum()))
        budgets = policy.head_budgets(obs)
        return [keep_top_visual(policy.scores(obs, i), obs.visual, budgets[i]) for i in range(obs.layers)]

    def decide(self, modules: list[nn.Module], obs: Observation, keys: list[torch.Tensor]) -> None:
        """Mask, in every layer, the entries its heads do not keep."""
        for module, keep in zip(modules, self.head_keep(obs)):
            module.masked_key_indices = torch.nonzero(~keep, as_tuple=True)
