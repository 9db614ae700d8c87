"""KV-cache compression policies applied right after prefill, as small dataclasses.

Every policy implements `compress(cache, obs)`, which only masks (per head, like kvpress's AdaKV
press): the hot store keeps its size and removed entries get -inf in that head's attention.
Calling `cache.compact(reserve)` afterwards gathers each head's surviving entries to the
per-layer maximum and frees the rest; the study measures both forms.

The budget is the fraction of *visual* entries kept, counted over every (layer, KV head); text
entries (the question, <bos>, <img>) are always kept, so the recent-window terms of the published
methods are covered by the text. Tensor shapes, once: keys (batch, kv_heads, length, head_dim);
scores and keep masks (batch, kv_heads, length); per-head budgets (layers, kv_heads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from pilot_experiments.kvcache import KVCache, LayerCache, select_per_head
from pilot_experiments.studies.hybrid_kv.allocation import allocate, spread_by_score
from pilot_experiments.studies.hybrid_kv.observe import Observation


class PolicyError(ValueError):
    """A policy configured with knobs it cannot honour (budget outside (0, 1], unknown mode)."""


def _check_fraction(name: str, value: float, *, low_open: bool = True) -> None:
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    if not ok:
        raise PolicyError(f"{name} must lie in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")


@dataclass
class Policy:
    """Base of every policy: `compress` edits a just-prefilled cache in place (masks only)."""

    def compress(self, cache: KVCache, obs: Observation) -> None:
        """cache: the prefilled `KVCache`; obs: the window attention taken right after prefill."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass
class FullCache(Policy):
    """Keeps every entry: the uncompressed reference every other policy is compared with."""

    def compress(self, cache: KVCache, obs: Observation) -> None:
        return None


def keep_top_visual(scores: torch.Tensor, visual: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    """Keep mask: every text entry, plus each head's `budgets[h]` highest-scored visual entries
    (ties go to the earlier entry). scores, visual: (batch, kv_heads, length); budgets (kv_heads,)."""
    ranked = scores.float().masked_fill(~visual, float("-inf"))
    order = torch.argsort(ranked, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ~visual | (rank < budgets.to(rank.device).view(1, -1, 1))


@dataclass
class VisualBudgetPolicy(Policy):
    """Mechanics shared by the pruning policies: split the global visual budget into per-head
    budgets (`head_budgets`), score entries (`scores`), keep each head's top entries (`evict`)."""

    budget: float = 0.2

    def __post_init__(self) -> None:
        _check_fraction("budget", self.budget)

    def total_budget(self, obs: Observation) -> int:
        """Visual entries kept over every (layer, KV head)."""
        per_head = int(obs.visual[0, 0].sum())
        return round(self.budget * per_head * obs.layers * obs.visual.shape[1])

    def head_budgets(self, obs: Observation) -> torch.Tensor:
        """(layers, kv_heads) visual entries each head keeps; uniform unless overridden."""
        shape = (obs.layers, obs.visual.shape[1])
        return allocate(self.total_budget(obs), torch.ones(shape), torch.full(shape, int(obs.visual[0, 0].sum())))

    def scores(self, obs: Observation, layer: int) -> torch.Tensor:
        """Per-entry importance: attention received from the observation window (the question)."""
        return obs.entry_scores(layer)

    def evict(self, layer: LayerCache, keep: torch.Tensor, obs: Observation) -> None:
        layer.keep(keep)

    def compress(self, cache: KVCache, obs: Observation) -> None:
        budgets = self.head_budgets(obs)
        for i, layer in enumerate(cache.layers):
            self.evict(layer, keep_top_visual(self.scores(obs, i), obs.visual, budgets[i]), obs)


def merge_entries(layer: LayerCache, source: torch.Tensor, target: torch.Tensor, real: torch.Tensor, *, pivotal: bool = False) -> None:
    """Fold hot slots `source` into slots `target` per head (both (batch, kv_heads, m); `real`
    marks which pairs are meant, the rest is padding) and remove the sources. Average: each target
    becomes the count-weighted mean of its members, so it stays the exact mean of the original
    entries. Pivotal: the target keeps half the weight and its merged sources share the other half."""
    hot = layer.view()
    count = hot.count.float()
    weight = count.gather(2, source) * real
    mass = torch.zeros_like(count).scatter_add_(2, target, weight)
    for name in ("keys", "values"):
        t = getattr(hot, name)
        d = t.shape[-1]
        src = t.float().gather(2, source.unsqueeze(-1).expand(-1, -1, -1, d)) * weight.unsqueeze(-1)
        acc = torch.zeros_like(t, dtype=torch.float32).scatter_add_(2, target.unsqueeze(-1).expand(-1, -1, -1, d), src)
        m = mass.unsqueeze(-1)
        if pivotal:
            merged = 0.5 * t.float() + 0.5 * acc / m.clamp_min(1e-12)
        else:
            merged = (count.unsqueeze(-1) * t.float() + acc) / (count.unsqueeze(-1) + m)
        t.copy_(torch.where(m > 0, merged, t.float()).to(t.dtype))
    hot.count += mass.round().long()
    layer.remove(torch.zeros_like(hot.valid).scatter_(2, source, real))


MERGE_BLOCK = 1024  # evicted entries compared with the kept ones at a time: memory grows with kept entries, not L x L


@dataclass
class LookM(VisualBudgetPolicy):
    """Text-prior eviction: keeps all text and the visual entries the question attends to most,
    then merges every evicted visual entry into its most key-similar kept visual entry. Follows
    LOOK-M (Wan et al., 2024, https://arxiv.org/abs/2406.18139); merge 'average' or 'pivotal'."""

    merge: Literal["average", "pivotal", "none"] = "average"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge not in ("average", "pivotal", "none"):
            raise PolicyError(f"merge must be 'average', 'pivotal' or 'none', not {self.merge!r}")

    def evict(self, layer: LayerCache, keep: torch.Tensor, obs: Observation) -> None:
        if self.merge == "none":
            return layer.keep(keep)
        hot = layer.view()
        source, real = select_per_head(obs.visual & ~keep & hot.valid)
        kept, kept_real = select_per_head(obs.visual & keep & hot.valid)
        real &= kept_real.any(-1, keepdim=True)
        keys = F.normalize(hot.keys.float(), dim=-1)
        d = keys.shape[-1]
        kept_keys = keys.gather(2, kept.unsqueeze(-1).expand(-1, -1, -1, d)).transpose(-1, -2)  # (b, h, d, k)
        best = []  # cosine similarity of evicted to kept entries, a block of evicted entries at a time: no L x L matrix
        for start in range(0, source.shape[-1], MERGE_BLOCK):
            block = keys.gather(2, source[..., start:start + MERGE_BLOCK, None].expand(-1, -1, -1, d))
            best.append((block @ kept_keys).masked_fill(~kept_real.unsqueeze(2), float("-inf")).argmax(-1))
        target = kept.gather(2, torch.cat(best, dim=-1)) if best else source
        merge_entries(layer, source, target, real, pivotal=self.merge == "pivotal")
        layer.keep(keep)


@dataclass
class MadaKV(VisualBudgetPolicy):
    """Modality-aware eviction: each head's visual budget follows its measured preference for
    visual entries, and layers after ones that lost attention mass get more budget. Follows
    MadaKV (Li et al., 2025, https://arxiv.org/abs/2506.15724), our reading of its two parts."""

    compensation: float = 1.0
    floor: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.compensation < 0 or self.floor < 0:
            raise PolicyError("compensation and floor must be non-negative")

    def head_budgets(self, obs: Observation) -> torch.Tensor:
        v, heads = int(obs.visual[0, 0].sum()), obs.visual.shape[1]
        total = self.total_budget(obs)
        uniform = torch.full((heads,), total // (obs.layers * heads))
        lost = []
        for i in range(obs.layers):  # attention mass a uniform budget would drop in each layer
            s = obs.entry_scores(i).masked_fill(~obs.visual, 0.0)
            keep = keep_top_visual(s, obs.visual, uniform)
            lost.append(float(1 - ((s * keep).sum(-1) / s.sum(-1).clamp_min(1e-12)).mean()))
        carried = torch.tensor([0.0] + lost[:-1]).cumsum(0)
        layer_totals = allocate(total, 1 + self.compensation * carried, torch.full((obs.layers,), heads * v))
        out = []
        for i in range(obs.layers):
            pref = obs.visual_share(i).mean(0)
            out.append(allocate(int(layer_totals[i]), pref + self.floor * pref.mean(), torch.full((heads,), v)))
        return torch.stack(out)


@dataclass
class SparseMM(VisualBudgetPolicy):
    """Head-sparse eviction: heads that localise the named object in calibration get most of the
    budget, the rest is spread evenly. Follows SparseMM (Wang et al., 2025,
    https://arxiv.org/abs/2506.05344); `head_scores` (layers, kv_heads) come from `calibrate`."""

    head_scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    uniform_share: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction("uniform_share", self.uniform_share, low_open=False)
        if self.head_scores.dim() != 2 or bool((self.head_scores < 0).any()):
            raise PolicyError("head_scores must be a non-negative (layers, kv_heads) tensor; compute it with sparsemm.calibrate")

    def head_budgets(self, obs: Observation) -> torch.Tensor:
        if tuple(self.head_scores.shape) != (obs.layers, obs.visual.shape[1]):
            raise PolicyError(f"head_scores {tuple(self.head_scores.shape)} do not match the model's (layers, kv_heads)")
        weights = spread_by_score(self.head_scores, self.uniform_share)
        return allocate(self.total_budget(obs), weights, torch.full(weights.shape, int(obs.visual[0, 0].sum())))


@dataclass
class Quantize(Policy):
    """Moves every kept visual entry into int8 or packed int4 codes with per-channel scales, so a
    pruned cache also shrinks per entry; compose it after a pruning policy. Per-channel symmetric
    quantization as in KIVI (Liu et al., 2024, https://arxiv.org/abs/2402.02750), keys and values alike."""

    bits: int = 8

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise PolicyError(f"bits must be 4 or 8, not {self.bits}")

    def compress(self, cache: KVCache, obs: Observation) -> None:
        for layer in cache.layers:
            hot = layer.view()
            layer.quantize(obs.visual[..., : layer.length] & hot.valid, self.bits)


@dataclass
class Compose(Policy):
    """Applies several policies in turn (every one sees the observation taken after prefill);
    e.g. `Compose((LookM(0.2), Quantize(8)))`. Slot-editing steps such as Quantize go last."""

    policies: tuple[Policy, ...] = ()

    def __post_init__(self) -> None:
        if not self.policies:
            raise PolicyError("Compose needs at least one policy")

    def compress(self, cache: KVCache, obs: Observation) -> None:
        for policy in self.policies:
            policy.compress(cache, obs)

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.policies)
