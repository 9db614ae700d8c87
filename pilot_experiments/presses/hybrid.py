"""HybridKV as a kvpress press: static heads pruned once, dynamic heads retrieve chunks at every decode step."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from kvpress.presses.base_press import is_prefilling
from torch import nn

from pilot_experiments.presses.observed import ObservedPress
from pilot_experiments.presses.rope import rotated_queries
from pilot_experiments.studies.hybrid_kv import Hybrid, Observation
from pilot_experiments.studies.hybrid_kv.hybrid import chunk_mean_keys, take_chunks
from pilot_experiments.studies.hybrid_kv.policies import keep_top_visual


@dataclass
class Retrieval:
    """One layer's retrieval state: the masks its static heads keep for good, and, for its dynamic heads, the
    prompt positions of every chunk (-1: padding), the chunk mean keys and each head's budget."""

    static_removed: torch.Tensor  # (batch, kv_heads, length) bool
    dynamic: torch.Tensor  # (n_dyn,) KV-head indices
    slots: torch.Tensor  # (chunks * chunk,) prompt positions
    mean_keys: torch.Tensor  # (batch, n_dyn, chunks, head_dim)
    chunk_valid: torch.Tensor  # (batch, n_dyn, chunks)
    entry_valid: torch.Tensor  # (batch, n_dyn, chunks * chunk)
    budgets: torch.Tensor  # (n_dyn,)


@dataclass
class HybridPress(ObservedPress):
    """HybridKV (Zeng et al., 2026, https://arxiv.org/abs/2604.05887): KV heads whose attention on the image is
    large and unstable across queries are "dynamic" and keep every image entry in reach, retrieving at each decode
    step only the chunks whose mean key best matches the current query; the other ("static") heads keep their top
    image entries once. Budgets are split top-down (layers, then heads) by visual attention share. Classification,
    budgets and static pruning are the study's `Hybrid` policy, run on the attention of the prompt's last
    `window_size` queries (`ObservedPress`); `dynamic_fraction`, `chunk` and `floor` are its knobs.

    Use it around the whole generation (`with press(model): model.generate(...)`): dynamic heads choose their
    chunks in a hook that runs before every decode step's attention.

    Deviations from the paper, named: head classes, budgets and static scores come from kvpress's
    question-agnostic window (the prompt's last queries); chunks are `chunk` consecutive image entries; the
    retrieved entries are masked in and out of the full prompt cache rather than offloaded to host memory and
    copied back (kvpress keeps one cache on the device; the study's `RetrievalLayerCache` does the offload), so
    this press measures answers, not memory or transfer time.
    """

    dynamic_fraction: float = 0.5
    chunk: int = 8
    floor: float = 0.1
    _retrieval: dict = field(default_factory=dict, init=False, repr=False)

    def policy(self, budget: float) -> Hybrid:
        return Hybrid(budget, dynamic_fraction=self.dynamic_fraction, chunk=self.chunk, floor=self.floor)

    def decide(self, modules: list[nn.Module], obs: Observation, keys: list[torch.Tensor]) -> None:
        kept = self.competing_budget(obs)
        if kept == 0:
            self._retrieval = {}
            return super().decide(modules, obs, keys)
        policy = self.policy(kept / int(obs.visual[0, 0].sum()))
        budgets, dynamic = policy.head_budgets(obs), policy.classify(obs)
        slots = torch.nonzero(obs.visual[0, 0]).flatten()
        padded = torch.full((-(-len(slots) // self.chunk) * self.chunk,), -1, dtype=torch.long, device=slots.device)
        padded[: len(slots)] = slots
        self._retrieval = {}
        for i, module in enumerate(modules):
            keep_static = keep_top_visual(policy.scores(obs, i), obs.visual, budgets[i])
            dyn = torch.nonzero(dynamic[i]).flatten().to(keep_static.device)
            keep_static[:, dyn] = True  # dynamic heads: every chunk stays retrievable, chosen per step
            module.masked_key_indices = torch.nonzero(~keep_static, as_tuple=True)
            if len(dyn) == 0:
                continue
            chunk_keys = keys[i][:, dyn][:, :, padded.clamp_min(0)]
            entry_valid = (padded >= 0).expand(keys[i].shape[0], len(dyn), -1)
            mean_keys, chunk_valid = chunk_mean_keys(chunk_keys, entry_valid, self.chunk)
            self._retrieval[module.layer_idx] = Retrieval(~keep_static, dyn, padded, mean_keys, chunk_valid, entry_valid,
                                                          budgets[i].to(keep_static.device)[dyn])

    def retrieve(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before a decode step's attention: mask, in each dynamic head, the image entries outside its best chunks."""
        state = self._retrieval.get(module.layer_idx)
        hidden_states = kwargs["hidden_states"]
        if state is None or is_prefilling(kwargs["cache_position"], hidden_states.shape[1]):
            return
        queries = rotated_queries(module, hidden_states, kwargs["position_embeddings"])
        b, heads, n, d = queries.shape
        kv_heads = state.static_removed.shape[1]
        queries = queries.view(b, kv_heads, heads // kv_heads, n, d)[:, state.dynamic]
        ranked, taken = take_chunks(queries, state.mean_keys, state.chunk_valid, state.entry_valid, state.budgets, self.chunk)
        length = state.static_removed.shape[2]
        position = torch.where(taken, state.slots[ranked], length)
        chosen = torch.zeros(b, len(state.dynamic), length + 1, dtype=torch.bool, device=queries.device)
        chosen = chosen.scatter_(2, position, True)[..., :length]
        removed = state.static_removed.clone()
        image = torch.zeros(length, dtype=torch.bool, device=queries.device)
        image[state.slots[state.slots >= 0]] = True
        removed[:, state.dynamic] = image & ~chosen
        module.masked_key_indices = torch.nonzero(removed, as_tuple=True)

    @contextmanager
    def __call__(self, model: nn.Module) -> Generator:
        with super().__call__(model):
            language_model = model.model.language_model if hasattr(model.model, "language_model") else model.model
            hooks = [layer.self_attn.register_forward_pre_hook(self.retrieve, with_kwargs=True) for layer in language_model.layers]
            try:
                yield
            finally:
                for hook in hooks:
                    hook.remove()
                self._retrieval = {}

