"""What the policies look at: the prefill queries of each layer and their attention on the cache.

A backend's query tap (`backend.query_tap()`; `ReferenceQueryTap(model)` for the reference LVLM) keeps every
decoder layer's latest queries, so that attention weights can be computed on demand for a few
queries only (the observation window), and so that retrieval can score chunks with the current
decode query. `observe` turns the tapped window queries into an `Observation`: per layer, the
softmax attention of each window query on every hot entry, exactly as the model computes it
(RoPE, 1/sqrt(d) scaling, causal within the window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pilot_experiments.backends.base import QueryTap as Tap
from pilot_experiments.kvcache import VISUAL, KVCache


class ObservationError(ValueError):
    """Attention cannot be observed (a prompt without visual entries, a window longer than the
    prompt); a tap that holds no queries raises `BackendError`."""


@dataclass
class Observation:
    """Per layer, `attention[l]`: (batch, heads, window, length) softmax weights of the window
    queries on the hot entries; `visual`: (batch, kv_heads, length) bool, which entries are visual;
    `group`: query heads per KV head; `tap`: the tap, for policies that keep querying it."""

    attention: list[torch.Tensor]
    visual: torch.Tensor
    group: int
    tap: Tap

    @property
    def layers(self) -> int:
        return len(self.attention)

    def entry_scores(self, layer: int) -> torch.Tensor:
        """(batch, kv_heads, length): attention each entry received, summed over the window
        queries and the query heads sharing the KV head."""
        a = self.attention[layer].sum(2)
        b, h, n = a.shape
        return a.view(b, h // self.group, self.group, n).sum(2)

    def visual_share(self, layer: int) -> torch.Tensor:
        """(batch, kv_heads): mean share of attention that the window queries give visual entries."""
        a = self.attention[layer]
        b, h, w, n = a.shape
        vis = self.visual[:, :, None, None, :].float()  # (b, kv, 1, 1, n)
        per_query = (a.view(b, h // self.group, self.group, w, n) * vis).sum(-1)  # (b, kv, group, w)
        return per_query.mean((2, 3))


def window_length(cache: KVCache) -> int:
    """Number of entries after the last visual one (the question): the observation window."""
    modality = cache[0].view().modality[0, 0]
    visual = torch.nonzero(modality == VISUAL)
    if len(visual) == 0:
        raise ObservationError("the prompt has no visual entries to compress")
    return cache.length - 1 - int(visual[-1])


@torch.no_grad()
def observe(tap: Tap, cache: KVCache, window: int | None = None) -> Observation:
    """Attention of the last `window` prefill queries (default: the question after the last
    visual entry) on every hot entry of every layer, right after prefill."""
    window = window_length(cache) if window is None else window
    if not 0 < window <= cache.length:
        raise ObservationError(f"window {window} must lie in [1, {cache.length}]")
    attention = []
    for i, layer in enumerate(cache.layers):
        store = layer.view()
        positions = store.position[:, 0, -window:]
        q = tap.queries(i, positions).float()
        group = q.shape[1] // store.keys.shape[1]
        keys = store.keys.float().repeat_interleave(group, dim=1)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        visible = store.valid.repeat_interleave(group, dim=1).unsqueeze(2)
        causal = store.position[:, 0, None, :] <= positions[:, :, None]  # (b, w, L)
        scores = scores.masked_fill(~(visible & causal.unsqueeze(1)), float("-inf"))
        attention.append(torch.softmax(scores, dim=-1))
    first = cache[0].view()
    return Observation(attention, first.modality == VISUAL, group, tap)
