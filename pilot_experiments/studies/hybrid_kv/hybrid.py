"""HybridKV: classify heads, allocate the budget top-down, prune static heads and let dynamic
heads retrieve chunks of visual entries at every decode step.

`RetrievalLayerCache` is a `LayerCache` whose dynamic heads see, at each decode step, only the
visual entries of the chunks whose mean key best matches the current query. Before `compact` the
chunks stay in the hot store and retrieval is a per-step mask; `compact` moves them to the offload
store (CPU memory when the model runs on a GPU), keeps only the chunk mean keys on the device, and
copies the selected entries into a small working set at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from pilot_experiments.backends.base import QueryTap
from pilot_experiments.kvcache import VISUAL, KVCache, LayerCache, QuantBlock, Store, select_per_head
from pilot_experiments.studies.hybrid_kv.allocation import allocate
from pilot_experiments.studies.hybrid_kv.observe import Observation
from pilot_experiments.studies.hybrid_kv.policies import PolicyError, VisualBudgetPolicy, _check_fraction, keep_top_visual


def rank_chunks(queries: torch.Tensor, mean_keys: torch.Tensor, chunk_valid: torch.Tensor) -> torch.Tensor:
    """Chunk ids per head, best first, by q.k-bar summed over the queries that share the head.
    queries (batch, heads, group, n, head_dim); mean_keys (batch, heads, chunks, head_dim);
    chunk_valid (batch, heads, chunks). Returns (batch, heads, chunks) long."""
    scores = torch.einsum("bhgnd,bhcd->bhc", queries.float(), mean_keys.float())
    scores = scores.masked_fill(~chunk_valid, float("-inf"))
    return torch.argsort(scores, dim=-1, descending=True, stable=True)


def chunk_mean_keys(keys: torch.Tensor, valid: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean key of every chunk of `chunk` consecutive positions, over its valid entries, and which chunks hold any.
    keys (batch, heads, chunks * chunk, head_dim); valid (batch, heads, chunks * chunk). Returns
    (batch, heads, chunks, head_dim) in the keys' dtype and (batch, heads, chunks) bool."""
    b, h, n, d = keys.shape
    counts = valid.view(b, h, n // chunk, chunk).sum(-1)
    summed = (keys.float() * valid.unsqueeze(-1)).view(b, h, n // chunk, chunk, d).sum(3)
    return (summed / counts.clamp_min(1).unsqueeze(-1)).to(keys.dtype), counts > 0


def take_chunks(queries: torch.Tensor, mean_keys: torch.Tensor, chunk_valid: torch.Tensor, entry_valid: torch.Tensor,
                budgets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk positions (batch, heads, chunks * chunk) in retrieval order and which of them are taken: the valid
    entries of the best chunks (`rank_chunks`), cut at each head's budget (heads,)."""
    order = rank_chunks(queries, mean_keys, chunk_valid)
    ranked = (order.unsqueeze(-1) * chunk + torch.arange(chunk, device=order.device)).flatten(2)
    valid = entry_valid.gather(2, ranked)
    return ranked, valid & (valid.cumsum(-1) <= budgets.view(1, -1, 1))


class RetrievalLayerCache(LayerCache):
    """A layer cache whose `dynamic` KV heads attend, per decode step, to `budgets[h]` visual
    entries taken from their best chunks (see the module docstring). Chunks are `chunk`
    consecutive visual entries (a strip of patches in raster order)."""

    def __init__(self, layer: LayerCache, *, tap: QueryTap, index: int, visual: torch.Tensor, dynamic: torch.Tensor,
                 budgets: torch.Tensor, chunk: int, cold_bits: int | None = None) -> None:
        self.__dict__.update(layer.__dict__)
        self.tap, self.index, self.chunk, self.cold_bits = tap, index, chunk, cold_bits
        self.dyn = torch.nonzero(dynamic.cpu()).flatten().to(self.device)
        self.budgets = budgets.to(self.device)
        slots = torch.nonzero(visual[0, 0]).flatten()
        n_chunks = math.ceil(len(slots) / chunk)
        padded = torch.full((n_chunks * chunk,), -1, dtype=torch.long, device=self.device)
        padded[: len(slots)] = slots
        self.slots = padded  # hot slot of every chunk position (-1: padding), while not offloaded
        keys, valid = self._chunk_view("keys")
        self.entry_valid = valid  # (batch, n_dyn, chunks * chunk)
        self.mean_keys, self.chunk_valid = chunk_mean_keys(keys, valid, chunk)
        self.cold: dict[str, torch.Tensor | QuantBlock] | None = None  # set by `compact`
        self.work_start: torch.Tensor | None = None  # (batch, n_dyn) first working slot
        self.work_region: torch.Tensor | None = None  # (batch, kv_heads, n) working slots
        self.moved_bytes = 0  # copied from the offload store into the working slots so far (host-to-device on a GPU)

    # -- chunk bookkeeping --------------------------------------------------------------------
    def _chunk_view(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic heads' visual entries laid out by chunk: (batch, n_dyn, chunks*chunk[, d]) and validity."""
        hot = self.view()
        idx = self.slots.clamp_min(0)
        t = getattr(hot, name)[:, self.dyn][:, :, idx]
        valid = hot.valid[:, self.dyn][:, :, idx] & (self.slots >= 0)
        return t, valid

    @property
    def offloaded_chunks(self) -> bool:
        return self.cold is not None

    def queries(self, n_new: int) -> torch.Tensor:
        """(batch, n_dyn, group, n_new, head_dim) rotated queries of the entries just appended."""
        positions = self.hot.position[:, 0, self.length - n_new : self.length]
        q = self.tap.queries(self.index, positions)
        b, heads, n, d = q.shape
        return q.view(b, self.kv_heads, heads // self.kv_heads, n, d)[:, self.dyn]

    def retrieve(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk positions (batch, n_dyn, chunks*chunk) in retrieval order, and which of them are
        taken: the valid entries of the best chunks, cut at each head's budget."""
        return take_chunks(queries, self.mean_keys, self.chunk_valid, self.entry_valid, self.budgets[self.dyn], self.chunk)

    # -- attention ----------------------------------------------------------------------------
    def read(self, n_new: int):
        if len(self.dyn) == 0:
            return super().read(n_new)
        ranked, taken = self.retrieve(self.queries(n_new))
        if self.offloaded_chunks:
            self._fill_working_set(ranked, taken)
            return super().read(n_new)
        keys, values, mask = super().read(n_new)  # chunks still hot: a per-step mask
        b, _, total, _ = keys.shape
        if mask is None:
            mask = torch.zeros(b, self.kv_heads, n_new, total, dtype=self.dtype, device=self.device)
        slot = torch.where(taken, self.slots[ranked], total)
        chosen = torch.zeros(b, len(self.dyn), total + 1, dtype=torch.bool, device=self.device).scatter_(2, slot, True)[..., :total]
        visual = torch.zeros_like(chosen)
        visual[..., self.slots[self.slots >= 0]] = True
        blocked = torch.zeros(b, self.kv_heads, total, dtype=torch.bool, device=self.device)
        blocked[:, self.dyn] = visual & ~chosen
        return keys, values, mask.masked_fill(blocked.unsqueeze(2), float("-inf"))

    def _fill_working_set(self, ranked: torch.Tensor, taken: torch.Tensor) -> None:
        """Copy the taken entries from the offload store into each dynamic head's working slots."""
        index, real = select_per_head(taken)
        wk, wv = self._cold_entries(ranked.gather(2, index))
        value_bits = self.cold_bits or torch.finfo(self.dtype).bits
        self.moved_bytes += int(real.sum()) * 2 * self.head_dim * value_bits // 8  # keys and values, as stored
        slots = self.work_start.unsqueeze(-1) + torch.arange(index.shape[2], device=self.device)
        for name, src in (("keys", wk), ("values", wv)):
            t = getattr(self.hot, name)[:, self.dyn]
            t.scatter_(2, slots.unsqueeze(-1).expand(-1, -1, -1, self.head_dim), src)
            getattr(self.hot, name)[:, self.dyn] = t
        region = self.work_region.shape[2]
        valid = self.hot.valid[:, self.dyn, :region] & ~self.work_region[:, self.dyn]
        self.hot.valid[:, self.dyn, :region] = valid.scatter_(2, slots, real)

    def _cold_entries(self, picked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of chunk positions `picked` (batch, n_dyn, m), fetched to the device."""
        where = picked.to(self.offload_device)
        if self.cold_bits is None:
            out = [self.cold[n].gather(2, where.unsqueeze(-1).expand(-1, -1, -1, self.head_dim)) for n in ("keys", "values")]
            return out[0].to(self.device), out[1].to(self.device)
        block: QuantBlock = self.cold["block"]
        codes = [c.gather(2, where.unsqueeze(-1).expand(-1, -1, -1, c.shape[-1])) for c in (block.key_codes, block.value_codes)]
        part = QuantBlock(block.bits, codes[0], codes[1], block.key_scale, block.value_scale, block.meta.gather(where), self.head_dim)
        part = part.dequantize(self.dtype)
        return part.keys.to(self.device), part.values.to(self.device)

    # -- memory -------------------------------------------------------------------------------
    def compact(self, reserve: int = 0) -> None:
        """Move the dynamic heads' visual entries to the offload store (once), then compact to
        the per-layer maximum of (kept entries + working slots): each dynamic head gets
        `max(budgets of dynamic heads)` working slots right after its kept entries."""
        if not self.offloaded_chunks:
            self.cold = {}
            if len(self.dyn):
                self._offload_chunks()
        if self.work_region is not None:
            self.hot.valid[:, :, : self.work_region.shape[2]] &= ~self.work_region
        width = int(self.budgets[self.dyn].max()) if len(self.dyn) else 0
        counts = self.view().valid.sum(-1)  # (batch, kv_heads)
        dynamic = torch.zeros(self.kv_heads, dtype=torch.long, device=self.device)
        dynamic[self.dyn] = 1
        need = int((counts + width * dynamic).max())
        super().compact(reserve + need - int(counts.max()))
        self.length = need
        self.work_start = counts[:, self.dyn]
        pos = torch.arange(need, device=self.device)
        start = torch.zeros_like(counts).index_copy_(1, self.dyn, self.work_start) if len(self.dyn) else counts
        self.work_region = (pos >= start.unsqueeze(-1)) & (pos < start.unsqueeze(-1) + width * dynamic.view(1, -1, 1))
        self.hot.modality[:, :, :need][self.work_region] = VISUAL

    def _offload_chunks(self) -> None:
        keys, valid = self._chunk_view("keys")
        values, _ = self._chunk_view("values")
        if self.cold_bits is None:
            self.cold = {"keys": keys.to(self.offload_device), "values": values.to(self.offload_device)}
        else:
            zeros = torch.zeros_like(valid, dtype=torch.long)
            block = QuantBlock.quantize(Store(keys, values, zeros, zeros, zeros, zeros, valid), self.cold_bits)
            moved = {k: getattr(block, k).to(self.offload_device) for k in ("key_codes", "value_codes", "key_scale", "value_scale")}
            self.cold = {"block": replace(block, meta=block.meta.to(self.offload_device), **moved)}
        drop = torch.zeros(self.batch, len(self.dyn), self.length + 1, dtype=torch.bool, device=self.device)
        drop.scatter_(2, torch.where(self.slots >= 0, self.slots, self.length).expand(self.batch, len(self.dyn), -1), True)
        remove = torch.zeros(self.batch, self.kv_heads, self.length, dtype=torch.bool, device=self.device)
        remove[:, self.dyn] = drop[..., : self.length]
        self.remove(remove)

    def attended_visual(self) -> torch.Tensor:
        """(batch, kv_heads) visual entries each head attends at a decode step: kept (hot or
        quantized) visual entries of static heads, and each dynamic head's retrieval budget."""
        hot = self.view()
        static = hot.valid & (hot.modality == VISUAL)
        if self.offloaded_chunks:
            if self.work_region is not None:
                static[..., : self.work_region.shape[2]] &= ~self.work_region
        else:
            static[..., self.slots[self.slots >= 0]] &= ~self.dynamic_mask().view(1, -1, 1)
        count = static.sum(-1)
        for block in self.quant:
            count += (block.meta.valid & (block.meta.modality == VISUAL)).sum(-1)
        count[:, self.dyn] += torch.minimum(self.entry_valid.sum(-1), self.budgets[self.dyn])
        return count

    def dynamic_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.kv_heads, dtype=torch.bool, device=self.device)
        mask[self.dyn] = True
        return mask

    def logical_bytes(self) -> int:
        """Bytes of what a decode step attends: kept text, the attended visual entries (hot,
        quantized or retrieved) and the chunk mean keys."""
        per = 2 * self.head_dim * torch.finfo(self.dtype).bits // 8
        hot = self.view()
        text = int((hot.valid & (hot.modality != VISUAL)).sum())
        quant_visual = sum(int((b.meta.valid & (b.meta.modality == VISUAL)).sum()) for b in self.quant)
        quant_bytes = super().logical_bytes() - int(hot.valid.sum()) * per
        return (text + int(self.attended_visual().sum()) - quant_visual) * per + quant_bytes + self.mean_keys.nbytes

    def resident_bytes(self) -> int:
        return super().resident_bytes() + self.mean_keys.nbytes

    def offloaded_bytes(self) -> int:
        if not self.cold:
            return super().offloaded_bytes()
        if self.cold_bits is None:
            return super().offloaded_bytes() + sum(t.nbytes for t in self.cold.values())
        return super().offloaded_bytes() + self.cold["block"].nbytes()


@dataclass
class Hybrid(VisualBudgetPolicy):
    """Classifies KV heads as static or dynamic from how the question attends to the image, splits
    the budget top-down (global, layer, head), prunes static heads by text-prior attention and lets
    dynamic heads retrieve their best chunks by q.k-bar at every decode step. Follows HybridKV
    (Zeng et al., 2026, https://arxiv.org/abs/2604.05887); see the study's results page for which
    details are the paper's and which are ours."""

    dynamic_fraction: float = 0.5
    chunk: int = 8
    floor: float = 0.1
    cold_bits: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction("dynamic_fraction", self.dynamic_fraction, low_open=False)
        if self.chunk < 1 or self.floor < 0:
            raise PolicyError("chunk must be >= 1 and floor >= 0")
        if self.cold_bits not in (None, 4, 8):
            raise PolicyError(f"cold_bits must be None, 4 or 8, not {self.cold_bits}")

    def classify(self, obs: Observation) -> torch.Tensor:
        """(layers, kv_heads) bool, True for dynamic heads: the `dynamic_fraction` of heads with the
        highest visual share x instability, where instability is 1 - the mean overlap between
        each window query's top entries and the whole window's top entries (set size: the head's
        uniform budget). A head no query looks at visually is never dynamic."""
        v = int(obs.visual[0, 0].sum())
        m = max(1, round(self.budget * v))
        score = []
        for i in range(obs.layers):
            a = obs.attention[i]
            b, h, w, n = a.shape
            per_query = a.view(b, h // obs.group, obs.group, w, n).sum(2).masked_fill(~obs.visual.unsqueeze(2), -1.0)
            top_q = torch.zeros_like(per_query, dtype=torch.bool).scatter_(-1, per_query.topk(m, dim=-1).indices, True)
            whole = per_query.clamp_min(0).sum(2)
            top_all = torch.zeros_like(whole, dtype=torch.bool).scatter_(-1, whole.topk(m, dim=-1).indices, True)
            overlap = (top_q & top_all.unsqueeze(2)).sum(-1).float() / m  # (b, kv, w)
            score.append((obs.visual_share(i) * (1 - overlap.mean(-1))).mean(0))
        score = torch.stack(score)
        k = round(self.dynamic_fraction * score.numel())
        order = torch.argsort(score.flatten(), descending=True, stable=True)[:k]
        dynamic = torch.zeros(score.numel(), dtype=torch.bool)
        dynamic[order] = True
        return dynamic.view(score.shape) & (score > 0)

    def head_budgets(self, obs: Observation) -> torch.Tensor:
        """Top-down: layers get the global budget in proportion to their mean visual share, heads
        their layer's budget in proportion to their own (each plus `floor` x the mean)."""
        v, heads = int(obs.visual[0, 0].sum()), obs.visual.shape[1]
        share = torch.stack([obs.visual_share(i).mean(0) for i in range(obs.layers)]).double()
        layer_w = share.mean(1)
        layers = allocate(self.total_budget(obs), layer_w + self.floor * layer_w.mean(), torch.full((obs.layers,), heads * v))
        return torch.stack([allocate(int(layers[i]), share[i] + self.floor * share[i].mean(), torch.full((heads,), v)) for i in range(obs.layers)])

    def compress(self, cache: KVCache, obs: Observation) -> None:
        budgets, dynamic = self.head_budgets(obs), self.classify(obs)
        for i, layer in enumerate(cache.layers):
            keep = keep_top_visual(self.scores(obs, i), obs.visual, budgets[i])
            keep[:, dynamic[i].to(keep.device)] = True  # dynamic heads: every chunk stays retrievable
            layer.keep(keep)
            cache.layers[i] = RetrievalLayerCache(layer, tap=obs.tap, index=i, visual=obs.visual, dynamic=dynamic[i],
                                                  budgets=budgets[i], chunk=self.chunk, cold_bits=self.cold_bits)
