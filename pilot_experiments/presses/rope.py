"""Rotary tables and rotated queries as a press sees them, for plain and multimodal (Qwen2.5-VL) rotary."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

import torch
from kvpress.utils import get_prerope_query_states
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half


def text_rope(module: nn.Module, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (batch, length, head_dim). Where the tables come one per multimodal section (temporal,
    height, width: (3, batch, length, head_dim), as Qwen2.5-VL's language tower gets them) they are combined the
    way the model's own attention combines them; kvpress slices them as if they were one table."""
    cos, sin = position_embeddings
    if cos.dim() == 4:
        section = list(module.config.rope_parameters["mrope_section"]) * 2
        cos, sin = (torch.cat([part[i % 3] for i, part in enumerate(t.split(section, dim=-1))], dim=-1) for t in (cos, sin))
    return cos, sin


def rotated_queries(module: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(batch, heads, length, head_dim) queries of `hidden_states` after rotary, as the attention computes them."""
    cos, sin = text_rope(module, position_embeddings)
    cos, sin = cos[:, -hidden_states.shape[1]:].unsqueeze(1), sin[:, -hidden_states.shape[1]:].unsqueeze(1)
    queries = get_prerope_query_states(module, hidden_states)
    return queries * cos + rotate_half(queries) * sin


@contextmanager
def multimodal_rope(model: nn.Module) -> Generator:
    """Lets kvpress's own presses score Qwen2.5-VL's language tower: after each attention layer has run, and before
    any press's hook (enter this first), the rotary tables its hooks will read are combined into one (`text_rope`).
    kvpress 0.5.5 slices the per-section tables as if they were one table and fails on them. Harmless for other
    models and for our presses, which combine the tables themselves."""
    language_model = model.model.language_model if hasattr(model.model, "language_model") else model.model

    def combine(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        if "position_embeddings" in kwargs:
            kwargs["position_embeddings"] = text_rope(module, kwargs["position_embeddings"])

    hooks = [layer.self_attn.register_forward_hook(combine, with_kwargs=True) for layer in language_model.layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
