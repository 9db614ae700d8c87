"""LOOK-M as a kvpress press: text-prior eviction, then the evicted entries merged into the kept ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kvpress import SnapKVPress
from kvpress.utils import compute_n_kept
from torch import nn

from pilot_experiments.presses.rope import text_rope

MERGES = ("average", "pivotal", "none")


@dataclass
class LookMPress(SnapKVPress):
    """LOOK-M (Wan et al., 2024, https://arxiv.org/abs/2406.18139): keeps the prompt's text entries and the image
    entries the prompt attends to most, and merges every evicted entry into the kept entry whose key is most
    similar, so evicted image content still contributes.

    `compression_ratio` is kvpress's: the share of the prompt's entries removed in every layer and head.
    `visual` (batch, prompt length) marks the prompt's image tokens; set it before each prompt
    (`press.visual = input_ids == image_token_id`). With `visual` left None every entry may be evicted, as in
    a text-only model. `merge`: 'average' (a kept entry becomes the mean of itself and everything merged into
    it), 'pivotal' (it keeps half the weight, its merged entries share the other half) or 'none'.

    Deviations from the paper, named: entries are scored with the attention of the prompt's last
    `window_size` queries (SnapKV's window, kvpress's question-agnostic protocol: the question comes after
    compression), not LOOK-M's own text-prior scoring of the prefill; the text prior is 'text entries rank
    above every image entry'; of the paper's several merging strategies, two (average and pivotal) as the
    study's `LookM` reads them; only image entries are merged, into kept image entries, when `visual` is given.
    """

    merge: str = "average"
    visual: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, not {self.merge!r}")

    @staticmethod
    def compute_window_attention(module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, window_size: int,
                                 position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """SnapKV's window attention, also for Qwen2.5-VL's language tower (`rope.text_rope`)."""
        return SnapKVPress.compute_window_attention(module, hidden_states, keys, window_size, text_rope(module, position_embeddings))

    def score(self, module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              attentions: torch.Tensor, kwargs: dict) -> torch.Tensor:
        scores = super().score(module, hidden_states, keys, values, attentions, kwargs)
        if self.visual is None:
            return scores
        visual = self._visual(keys)
        return scores.masked_fill(~visual, float("inf"))  # the text prior: every text entry ranks first

    def _visual(self, keys: torch.Tensor) -> torch.Tensor:
        """(batch, kv_heads, length) mask of image entries, from `visual` (batch, length)."""
        if tuple(self.visual.shape) != (keys.shape[0], keys.shape[2]):
            raise ValueError(f"visual has shape {tuple(self.visual.shape)}; it must be (batch, prompt length) = "
                             f"{(keys.shape[0], keys.shape[2])}: set it for the prompt being compressed")
        return self.visual.to(keys.device, torch.bool)[:, None, :].expand(-1, keys.shape[1], -1)

    def compress(self, module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 attentions: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compression_ratio == 0:
            return keys, values
        scores = self.score(module, hidden_states, keys, values, attentions, kwargs)
        n_kept = compute_n_kept(keys.shape[2], self.compression_ratio)
        order = scores.argsort(dim=-1, descending=True, stable=True)
        kept, evicted = order[..., :n_kept], order[..., n_kept:]
        if self.merge != "none" and evicted.shape[-1]:
            mergeable = self._visual(keys) if self.visual is not None else torch.ones_like(scores, dtype=torch.bool)
            keys, values = merge_evicted(keys, values, kept, evicted, mergeable, pivotal=self.merge == "pivotal")
        index = kept.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
        return keys.gather(2, index).contiguous(), values.gather(2, index).contiguous()


def merge_evicted(keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, evicted: torch.Tensor,
                  mergeable: torch.Tensor, *, pivotal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (batch, kv_heads, length, head_dim) with every mergeable evicted entry folded into the
    mergeable kept entry of its head whose key is most cosine-similar. kept, evicted: (batch, kv_heads, n) indices;
    mergeable: (batch, kv_heads, length) bool. Average: a target becomes the mean of itself and its sources;
    pivotal: half the target, half the mean of its sources."""
    unit = F.normalize(keys.float(), dim=-1)
    d = keys.shape[-1]
    kept_unit = unit.gather(2, kept.unsqueeze(-1).expand(-1, -1, -1, d))
    source_unit = unit.gather(2, evicted.unsqueeze(-1).expand(-1, -1, -1, d))
    similarity = source_unit @ kept_unit.transpose(-1, -2)  # (batch, kv_heads, evicted, kept)
    kept_ok, source_ok = mergeable.gather(2, kept), mergeable.gather(2, evicted)
    similarity = similarity.masked_fill(~kept_ok.unsqueeze(2), float("-inf"))
    target = kept.gather(2, similarity.argmax(-1))  # slot each evicted entry merges into
    weight = (source_ok & kept_ok.any(-1, keepdim=True)).float()
    merged = []
    for tensor in (keys, values):
        source = tensor.float().gather(2, evicted.unsqueeze(-1).expand(-1, -1, -1, d)) * weight.unsqueeze(-1)
        total = torch.zeros_like(tensor, dtype=torch.float32).scatter_add_(2, target.unsqueeze(-1).expand(-1, -1, -1, d), source)
        count = torch.zeros(tensor.shape[:3], device=tensor.device).scatter_add_(2, target, weight).unsqueeze(-1)
        if pivotal:
            out = 0.5 * tensor.float() + 0.5 * total / count.clamp_min(1)
        else:
            out = (tensor.float() + total) / (1 + count)
        merged.append(torch.where(count > 0, out, tensor.float()).to(tensor.dtype))
    return merged[0], merged[1]
