"""The reference LVLM (model.py) behind the backend interface."""

from __future__ import annotations

import torch

from pilot_experiments.backends.base import BackendError
from pilot_experiments.kvcache import KVCache
from pilot_experiments.model import LVLM, Inputs, Output, rope


class ReferenceQueryTap:
    """Context manager: while active, `latest[i]` holds layer i's last query projection output
    (batch, T, heads * head_dim), before RoPE; `queries` rotates the ones asked for."""

    def __init__(self, model: LVLM) -> None:
        self.model = model
        self.latest: list[torch.Tensor | None] = [None] * len(model.blocks)
        self._handles: list = []

    def __enter__(self) -> ReferenceQueryTap:
        for i, block in enumerate(self.model.blocks):
            self._handles.append(block.attn.q.register_forward_hook(self._store(i)))
        return self

    def _store(self, i: int):
        def hook(module, args, output):
            self.latest[i] = output.detach()

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def queries(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """The last `positions.shape[1]` tapped queries of a layer, rotated to `positions`
        (batch, n): (batch, heads, n, head_dim)."""
        raw = self.latest[layer]
        if raw is None:
            raise BackendError("no query was tapped; run the model inside `with backend.query_tap()`")
        attn = self.model.blocks[layer].attn
        n = positions.shape[1]
        if raw.shape[1] < n:
            raise BackendError(f"asked for {n} queries but only {raw.shape[1]} were tapped")
        q = raw[:, -n:].view(raw.shape[0], n, attn.heads, attn.head_dim).transpose(1, 2)
        return rope(q, positions, attn.theta)


class ReferenceBackend:
    """The plain-PyTorch reference LVLM; `model` stays reachable for its SynthVis prompt layout
    (`embed_prompt`) and its parameter counts."""

    def __init__(self, model: LVLM) -> None:
        self.model = model
        cfg = model.cfg
        self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim = cfg.lm_layers, cfg.lm_heads, cfg.lm_kv_heads, cfg.head_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_cache(self, batch: int = 1, capacity: int = 256) -> KVCache:
        return self.model.new_cache(batch, capacity=capacity)

    def embed_prompt(self, pixels: torch.Tensor, times: torch.Tensor, text_ids: torch.Tensor, pool: int = 1, start: int = 0) -> Inputs:
        return self.model.embed_prompt(pixels, times, text_ids, pool, start)

    def embed_tokens(self, token_ids: torch.Tensor, positions: torch.Tensor) -> Inputs:
        return self.model.embed_tokens(token_ids, positions)

    def prefill(self, inputs: Inputs, cache: KVCache, *, need_attn: bool = False) -> Output:
        return self.model.prefill(inputs, cache, need_attn=need_attn)

    def decode(self, token_ids: torch.Tensor, cache: KVCache, *, positions: torch.Tensor | None = None, need_attn: bool = False) -> Output:
        return self.model.decode(token_ids, cache, positions=positions, need_attn=need_attn)

    def query_tap(self) -> ReferenceQueryTap:
        return ReferenceQueryTap(self.model)

