"""Streaming KV policies: what stays in the working cache as frames keep arriving.

`StreamPolicy` owns the mechanics (the shapes below, the frame loop hooks, building the cache a
question is read against); a policy overrides one or two hooks:

- `tokens(patches, previous)` picks which of a frame's patches are prefilled at all, from the
  pixels of this frame's patches and of the previous frame's;
- `keep(memory)` returns a (length,) boolean mask over the working cache after each frame;
- `question_cache(memory, question_ids)` builds the cache a question is answered from.

Shapes: patch pixels (n_patches, 3 * patch_px**2) in [0, 1]; cached keys (batch, kv_heads,
length, head_dim). Redundancy is judged on pixels (mean absolute change), not on ViT features as in
StreamingTOM: the small ViT's features carry a strong patch-position component, so the same patch
in two frames has cosine > 0.95 whatever it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from pilot_experiments.kvcache import KVCache, QuantBlock, Store, cat_stores
from pilot_experiments.studies.streaming.memory import StreamMemory, position_free


class PolicyError(ValueError):
    """A policy configured with knobs that cannot work (negative window, ratio outside its range)."""


def _positive(**knobs: int) -> None:
    for name, value in knobs.items():
        if value < 1:
            raise PolicyError(f"{name} must be at least 1, not {value}")


@dataclass
class StreamPolicy:
    """Keeps everything: the base class, and the growing full-cache baseline."""

    name: ClassVar[str] = "full"

    def tokens(self, patches: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """Indices (n,) of the patches of this frame to prefill; all of them by default."""
        return torch.arange(patches.shape[0])

    def keep(self, memory: StreamMemory) -> torch.Tensor | None:
        """(length,) mask of the working-cache slots to keep after a frame; None keeps all."""
        return None

    def after_frame(self, memory: StreamMemory) -> None:
        mask = self.keep(memory)
        if mask is not None:
            memory.keep(mask)

    def question_cache(self, memory: StreamMemory, question_ids: list[int], extra: int) -> tuple[KVCache, torch.Tensor]:
        """The cache a question is read against and each slot's patch index: a copy of the
        working cache by default."""
        return memory.fork(extra), memory.patch.clone()

    def long_term_bytes(self) -> int:
        """Bytes held outside the working cache (none for most policies)."""
        return 0

    def retrieved_bytes(self) -> int:
        """Bytes the last `question_cache` brought back from the long-term store (as stored; host-to-device on a
        GPU): none for most policies."""
        return 0

    def reserve(self, frame_entries: int) -> int:
        """Free slots to leave after each compaction: one frame by default, so that the next
        frame is appended without reallocating."""
        return frame_entries


FullCache = StreamPolicy


def _sinks(memory: StreamMemory, sink_tokens: int) -> torch.Tensor:
    """The first `sink_tokens` slots, and at least the stream's opening (a chat template's prefix)."""
    return torch.arange(memory.length) < max(sink_tokens, memory.opening)


def _recent(memory: StreamMemory, window_frames: int) -> torch.Tensor:
    return memory.frames() > memory.last_frame - window_frames


@dataclass
class SlidingWindow(StreamPolicy):
    """Keeps the last `window_frames` frames and drops everything older, <bos> included. The plain
    fixed-window baseline that StreamingLLM (arXiv:2309.17453) shows collapsing without sinks."""

    name: ClassVar[str] = "window"
    window_frames: int = 8

    def __post_init__(self) -> None:
        _positive(window_frames=self.window_frames)

    def keep(self, memory: StreamMemory) -> torch.Tensor:
        return _recent(memory, self.window_frames)


@dataclass
class SinkWindow(StreamPolicy):
    """Keeps the first `sink_tokens` entries (attention sinks) and the last `window_frames` frames,
    positions re-assigned by cache index. StreamingLLM, arXiv:2309.17453."""

    name: ClassVar[str] = "sinks+window"
    sink_tokens: int = 4
    window_frames: int = 8

    def __post_init__(self) -> None:
        _positive(sink_tokens=self.sink_tokens, window_frames=self.window_frames)

    def keep(self, memory: StreamMemory) -> torch.Tensor:
        return _sinks(memory, self.sink_tokens) | _recent(memory, self.window_frames)


@dataclass
class FrameBudget(StreamPolicy):
    """Drops a frame's tokens whose patch barely changed since the previous frame (mean absolute
    pixel change <= `change`), keeps at most `tokens_per_frame` of the rest (the most changed), and
    evicts the oldest frames beyond `max_entries` (sinks kept). StreamingTOM, arXiv:2510.18269."""

    name: ClassVar[str] = "frame-budget"
    tokens_per_frame: int = 16
    change: float = 0.02
    max_entries: int = 600
    sink_tokens: int = 4

    def __post_init__(self) -> None:
        _positive(tokens_per_frame=self.tokens_per_frame, max_entries=self.max_entries, sink_tokens=self.sink_tokens)
        if not 0.0 <= self.change < 1.0:
            raise PolicyError(f"change must lie in [0, 1), not {self.change}")

    def tokens(self, patches: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        change = torch.ones(patches.shape[0]) if previous is None else (patches - previous).abs().mean(-1).cpu()
        novel = torch.nonzero(change > self.change).flatten()
        top = novel[change[novel].argsort(descending=True)[: self.tokens_per_frame]]
        return top.sort().values

    def keep(self, memory: StreamMemory) -> torch.Tensor | None:
        if memory.length <= self.max_entries:
            return None
        frames = memory.frames()
        keep = torch.ones(memory.length, dtype=torch.bool)
        sinks = _sinks(memory, self.sink_tokens)
        for f in frames[~sinks].unique(sorted=True):  # oldest frames first
            if int(keep.sum()) <= self.max_entries:
                break
            keep &= sinks | (frames != f)
        return keep


@dataclass
class InfiniPot(StreamPolicy):
    """When the cache passes `max_entries`, compresses it in place to `target` of that: a
    `novelty_share` of the room goes to old visual tokens that differ most from the same patch in
    the newest frame, the rest to the largest value norms (sinks and the newest frame stay).
    InfiniPot-V, arXiv:2506.15745 (which judges redundancy on keys; we use pixels, see above)."""

    name: ClassVar[str] = "infinipot"
    max_entries: int = 600
    target: float = 0.75
    novelty_share: float = 0.5
    sink_tokens: int = 4
    _latest: torch.Tensor | None = field(default=None, init=False, repr=False)
    _pixels: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        _positive(max_entries=self.max_entries, sink_tokens=self.sink_tokens)
        if not 0.0 < self.target < 1.0 or not 0.0 <= self.novelty_share <= 1.0:
            raise PolicyError(f"target must lie in (0, 1) and novelty_share in [0, 1], not {self.target}, {self.novelty_share}")

    def reserve(self, frame_entries: int) -> int:
        return self.max_entries - int(self.target * self.max_entries) + frame_entries  # refill to the cap in place

    def tokens(self, patches: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        self._latest = patches.cpu()
        return torch.arange(patches.shape[0])

    def keep(self, memory: StreamMemory) -> torch.Tensor | None:
        self._pixels[memory.last_frame] = self._latest
        if memory.length <= self.max_entries:
            return None
        frames, patch = memory.frames(), memory.patch
        protected = _sinks(memory, self.sink_tokens) | (frames == memory.last_frame)
        newest = self._pixels[memory.last_frame]
        novelty = torch.full((memory.length,), float("inf"))  # <img> markers count as novel
        for f in frames[patch >= 0].unique().tolist():
            slots = (frames == f) & (patch >= 0)
            novelty[slots] = (self._pixels[f][patch[slots]] - newest[patch[slots]]).abs().mean(-1)
        values = torch.stack([layer.view().values[0] for layer in memory.cache.layers])  # (layers, heads, length, d)
        value_norm = values.float().norm(dim=-1).mean(dim=(0, 1)).cpu()
        budget = int(self.target * self.max_entries) - int(protected.sum())
        candidates = torch.nonzero(~protected & (novelty > 0)).flatten()
        by_novelty = candidates[novelty[candidates].argsort(descending=True)][: int(self.novelty_share * budget)]
        keep = protected.clone()
        keep[by_novelty] = True
        rest = torch.nonzero(~keep).flatten()
        keep[rest[value_norm[rest].argsort(descending=True)][: budget - len(by_novelty)]] = True
        self._pixels = {f: p for f, p in self._pixels.items() if bool((frames[keep] == f).any())}
        return keep


@dataclass
class Chunk:
    """A few consecutive archived frames: per layer a quantized store of position-free entries."""

    first: int
    last: int
    blocks: list[QuantBlock]
    patch: torch.Tensor
    coarse: bool = False

    def stores(self, dtype: torch.dtype) -> list[Store]:
        return [b.dequantize(dtype) for b in self.blocks]

    def nbytes(self) -> int:
        """Key and value codes plus scales, like the substrate's resident bytes (no metadata)."""
        return sum(b.nbytes() for b in self.blocks)


@dataclass
class HierarchicalMemory(StreamPolicy):
    """Ours: sinks and the last `window_frames` frames stay at full precision; older frames leave
    for a long-term store, minus tokens whose patch barely changed (mean absolute pixel change <=
    `change`) since the version last stored for that patch, in int8 chunks of
    `chunk_frames` frames that are pooled 2x2 and re-quantized to int4 once older than
    `coarse_after` frames. A question's queries score every chunk and the `top_chunks` best come
    back into the cache it is read against. Retrieval follows ReKV (arXiv:2503.00540) and
    LiveVLM (arXiv:2505.15269); the progressive store follows the survey's section 6."""

    name: ClassVar[str] = "hierarchical"
    window_frames: int = 8
    sink_tokens: int = 4
    chunk_frames: int = 4
    top_chunks: int = 3
    change: float = 0.02
    coarse_after: int = 200
    grid: int = 8
    top_entries: int = 4
    content_ids: frozenset[int] = frozenset()
    chunks: list[Chunk] = field(default_factory=list, init=False, repr=False)
    _pending: list[tuple[int, list[Store], torch.Tensor]] = field(default_factory=list, init=False, repr=False)
    _reference: torch.Tensor | None = field(default=None, init=False, repr=False)
    _patches: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    last_retrieved: list[Chunk] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        _positive(window_frames=self.window_frames, sink_tokens=self.sink_tokens, chunk_frames=self.chunk_frames,
                  top_chunks=self.top_chunks, coarse_after=self.coarse_after, grid=self.grid)
        if not 0.0 <= self.change < 1.0:
            raise PolicyError(f"change must lie in [0, 1), not {self.change}")

    def keep(self, memory: StreamMemory) -> torch.Tensor:
        return _sinks(memory, self.sink_tokens) | _recent(memory, self.window_frames)

    def tokens(self, patches: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        self._patches.append(patches.cpu())  # read again when the frame is archived
        return torch.arange(patches.shape[0])

    def after_frame(self, memory: StreamMemory) -> None:
        keep = self.keep(memory)
        frames = memory.frames()
        for f in frames[~keep].unique(sorted=True).tolist():
            self._archive(memory, (frames == f) & ~keep, f)
        memory.keep(keep)
        self._coarsen(memory.last_frame)

    # -- the long-term store ---------------------------------------------------------------------
    def _archive(self, memory: StreamMemory, select: torch.Tensor, frame: int) -> None:
        stores = [position_free(s, memory.theta) for s in memory.layer_stores(select)]
        patch = memory.patch[select]
        pixels = self._patches.pop(0)  # frames leave the window in arrival order
        visual = patch >= 0
        if self._reference is None:
            self._reference = torch.full((self.grid * self.grid, pixels.shape[-1]), float("inf"))
        change = (pixels[patch.clamp_min(0)] - self._reference[patch.clamp_min(0)]).abs().mean(-1)
        kept = ~((change <= self.change) & visual)
        self._reference[patch[kept & visual]] = pixels[patch[kept & visual]]
        index = torch.nonzero(kept).flatten()
        stores = [s.gather(index.view(1, 1, -1).expand(1, s.keys.shape[1], -1).to(s.keys.device)) for s in stores]
        self._pending.append((frame, stores, patch[kept]))
        if len(self._pending) == self.chunk_frames:
            self._seal()

    def _seal(self) -> None:
        per_layer = [cat_stores([p[1][i] for p in self._pending]) for i in range(len(self._pending[0][1]))]
        patch = torch.cat([p[2] for p in self._pending])
        self.chunks.append(Chunk(self._pending[0][0], self._pending[-1][0], [QuantBlock.quantize(s, 8) for s in per_layer], patch))
        self._pending = []

    def _coarsen(self, now: int) -> None:
        for chunk in self.chunks:
            if chunk.coarse or chunk.last > now - self.coarse_after:
                continue
            pooled = [self._pool(s, chunk.patch) for s in chunk.stores(torch.float32)]
            chunk.patch = pooled[0][1]
            chunk.blocks = [QuantBlock.quantize(s, 4) for s, _ in pooled]
            chunk.coarse = True

    def _pool(self, store: Store, patch: torch.Tensor) -> tuple[Store, torch.Tensor]:
        """Count-weighted means of each frame's entries that fall in the same 2x2 patch block."""
        row, col = patch.clamp_min(0) // self.grid, patch.clamp_min(0) % self.grid
        block = torch.where(patch >= 0, (row // 2 * 2) * self.grid + col // 2 * 2, -1)  # the block's top-left patch
        frame = store.frame[0, 0].cpu()
        key = frame * (self.grid * self.grid + 1) + block + 1
        groups, inverse = torch.unique(key, sorted=True, return_inverse=True)
        n = len(groups)
        weight = store.count[0, 0].float().cpu()
        out = {}
        for name in ("keys", "values"):
            t = getattr(store, name)[0].float().cpu()  # (heads, m, d)
            acc = torch.zeros(t.shape[0], n, t.shape[-1]).index_add_(1, inverse, t * weight[None, :, None])
            out[name] = (acc / torch.zeros(n).index_add_(0, inverse, weight)[None, :, None])[None]
        first = torch.full((n,), len(patch)).scatter_reduce(0, inverse, torch.arange(len(patch)), "amin")
        meta = store.gather(first.view(1, 1, -1).expand(1, store.keys.shape[1], -1))
        counts = torch.zeros(n, dtype=torch.long).index_add_(0, inverse, store.count[0, 0].cpu())
        pooled = Store(out["keys"], out["values"], meta.position, meta.modality, meta.frame, counts.expand_as(meta.count).clone(), meta.valid)
        return pooled, patch[first]

    def long_term_bytes(self) -> int:
        pending = sum(s.nbytes() for _, stores, _ in self._pending for s in stores)
        return sum(c.nbytes() for c in self.chunks) + pending

    def retrieved_bytes(self) -> int:
        return sum(c.nbytes() for c in self.last_retrieved)

    # -- retrieval --------------------------------------------------------------------------------
    def relevance(self, memory: StreamMemory, question_ids: list[int]) -> torch.Tensor:
        """(focus words, chunks) relevance: the queries (before RoPE) of each focus word of the
        question (its visual-content words, or every token when `content_ids` is empty) against
        the position-free keys of each chunk's visual entries. Per layer and query head a chunk
        scores the mean of its `top_entries` largest logits, z-scored across chunks; scores are
        averaged over heads and layers. Scoring a few best entries, not all, keeps big chunks
        from winning by size; chunks without visual entries score -inf."""
        queries = memory.question_queries(memory.fork(len(question_ids)), question_ids)
        focus = [i for i, t in enumerate(question_ids) if t in self.content_ids] or list(range(len(question_ids)))
        stores = [c.stores(torch.float32) for c in self.chunks]
        visible = [i for i, c in enumerate(self.chunks) if bool((c.patch >= 0).any())]
        score = torch.full((len(focus), len(self.chunks)), float("-inf"))
        total = torch.zeros(len(focus), len(visible))
        for layer, q in enumerate(queries):
            q = q[0, focus].float().cpu().transpose(0, 1)  # (heads, focus, d)
            best = []
            for i in visible:
                keys = stores[i][layer].keys[0, :, self.chunks[i].patch >= 0].float().cpu()  # (kv_heads, n, d)
                logits = q @ keys.repeat_interleave(q.shape[0] // keys.shape[0], dim=0).transpose(1, 2)  # (heads, focus, n)
                best.append(logits.topk(min(self.top_entries, keys.shape[1]), dim=-1).values.mean(-1))
            best = torch.stack(best, dim=-1)  # (heads, focus, visible chunks)
            total += ((best - best.mean(-1, keepdim=True)) / (best.std(-1, correction=0, keepdim=True) + 1e-6)).mean(0)
        score[:, visible] = total / len(queries)
        return score

    def pick(self, relevance: torch.Tensor) -> list[int]:
        """Up to `top_chunks` chunks, taken in turn from each focus word's ranking (so a question
        about two objects brings back chunks for both)."""
        rankings = [r.argsort(descending=True).tolist() for r in relevance]
        picks: list[int] = []
        while len(picks) < min(self.top_chunks, relevance.shape[1]):
            for ranking in rankings:
                nxt = next((i for i in ranking if i not in picks), None)
                if nxt is not None and len(picks) < self.top_chunks:
                    picks.append(nxt)
        return picks

    def question_cache(self, memory: StreamMemory, question_ids: list[int], extra: int) -> tuple[KVCache, torch.Tensor]:
        self.last_retrieved = []
        if not self.chunks:
            return memory.fork(extra), memory.patch.clone()
        picks = self.pick(self.relevance(memory, question_ids))
        self.last_retrieved = sorted((self.chunks[i] for i in picks), key=lambda c: c.first)
        sinks = _sinks(memory, self.sink_tokens)
        dtype = memory.cache[0].dtype
        device = memory.cache[0].device
        parts = [memory.layer_stores(sinks)]
        parts += [[s.to(device) for s in c.stores(dtype)] for c in self.last_retrieved]
        parts.append(memory.layer_stores(~sinks))
        patch = torch.cat([memory.patch[sinks], *(c.patch for c in self.last_retrieved), memory.patch[~sinks]])
        return memory.build(parts, extra), patch
