"""The interface the studies run a model through, whichever code implements the model.

A backend turns a prompt into `Inputs` (embeddings plus per-token position, modality and frame, so
the cache knows which entries are visual), prefills them into an explicit `KVCache`, decodes with
that cache, returns per-head attention weights when asked, and lets a `QueryTap` read the rotated
queries of every layer. Cache edits (masking, merging, compaction, quantization, offload) are
methods of the `KVCache` itself, so a policy written once works on every backend.

Shapes, once: token_ids and positions (batch, n); logits (batch, n, vocab); attention weights per
layer (batch, heads, n, L) over the L attended entries, hot slots first in slot order; tapped
queries (batch, heads, n, head_dim), already rotated to their positions.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

from pilot_experiments.kvcache import KVCache
from pilot_experiments.model import Inputs, Output


class BackendError(RuntimeError):
    """A model or request a backend cannot serve (missing package, unsupported architecture,
    a checkpoint path that holds no model)."""


@runtime_checkable
class QueryTap(Protocol):
    """While entered, remembers each decoder layer's latest queries."""

    def __enter__(self) -> QueryTap: ...

    def __exit__(self, *exc) -> None: ...

    def queries(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """The last `positions.shape[1]` tapped queries of `layer`, rotated to `positions`."""
        ...


@runtime_checkable
class Backend(Protocol):
    """What a study may ask of a model; see the module docstring for shapes."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def device(self) -> torch.device: ...

    def new_cache(self, batch: int = 1, capacity: int = 256) -> KVCache:
        """An empty cache sized for this model."""
        ...

    def embed_tokens(self, token_ids: torch.Tensor, positions: torch.Tensor) -> Inputs:
        """Text tokens as `Inputs` (all entries text, no frame)."""
        ...

    def prefill(self, inputs: Inputs, cache: KVCache, *, need_attn: bool = False) -> Output:
        """Append `inputs` to `cache` (causal among themselves, attending every valid entry)."""
        ...

    def decode(self, token_ids: torch.Tensor, cache: KVCache, *, positions: torch.Tensor | None = None, need_attn: bool = False) -> Output:
        """Append tokens at `positions` (default: right after the cache's last position)."""
        ...

    def query_tap(self) -> AbstractContextManager[QueryTap]:
        """A tap on the queries of every decoder layer, active inside `with`."""
        ...
