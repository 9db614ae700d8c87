"""The mechanics every streaming policy shares: a working KV cache fed one frame at a time.

A stream is laid out as the reference LVLM was trained to read it, `<bos> (<img> visual)*`, one
frame per step: the frame's visual tokens are prefilled against everything already cached, then the
policy edits the cache. Policies here treat all layers and heads alike, so one boolean mask over
the cache slots says what stays; `StreamMemory` applies it to every layer, compacts, and keeps what
the substrate's cache does not record: each entry's patch index within its frame.

Positions are re-assigned by cache index after every edit (StreamingLLM's rule): a key rotated for
position p is rotated again by (new - p), so the working cache always reads as one contiguous
sequence, as in training. Entries leaving for a long-term store are de-rotated to position 0
(position-free keys), and rotated again to wherever they are put back.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from pilot_experiments import synthvis
from pilot_experiments.kvcache import TEXT, VISUAL, KVCache, Store, cat_stores
from pilot_experiments.model import LVLM, SPECIAL_IDS, Inputs, rope


class StreamMemoryError(ValueError):
    """A cache edit that cannot apply (mask of the wrong length, frame out of order)."""


def rotate(keys: torch.Tensor, delta: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate keys (batch, kv_heads, n, head_dim) by `delta` positions (batch, kv_heads, n) with
    the model's RoPE; rotations add up, so rotating by (new - old) moves a key from old to new."""
    b, h, n, d = keys.shape
    return rope(keys.reshape(b * h, 1, n, d), delta.reshape(b * h, n), theta).view(b, h, n, d)


def patchify(pixels: torch.Tensor, patch_px: int) -> torch.Tensor:
    """(3, H, W) -> (H/p * W/p, 3 * p * p) pixel vectors, patches in raster order like the ViT's."""
    c, h, w = pixels.shape
    return pixels.view(c, h // patch_px, patch_px, w // patch_px, patch_px).permute(1, 3, 0, 2, 4).reshape(-1, c * patch_px**2)


def position_free(store: Store, theta: float) -> Store:
    """A copy of `store` whose keys are rotated back to position 0 (metadata position set to 0)."""
    keys = rotate(store.keys, -store.position, theta)
    return Store(keys, store.values.clone(), torch.zeros_like(store.position), store.modality.clone(), store.frame.clone(), store.count.clone(), store.valid.clone())


class StreamMemory:
    """The working cache of one stream (batch 1) and each slot's patch index (-1 for text), on the
    reference LVLM. `chat.ChatStreamMemory` is the same memory on a Qwen2.5-VL checkpoint;
    the policies and the study use only the methods both have."""

    markers_per_frame = 1  # <img>

    def __init__(self, model: LVLM, reserve: int = 0) -> None:
        self.model = model
        self.tok = synthvis.Tokenizer()
        self.patch_px = model.cfg.patch_px
        self.theta = model.cfg.rope_theta
        self.reserve = reserve
        self.cache = model.new_cache(1, capacity=max(reserve, 1))
        self.patch = torch.empty(0, dtype=torch.long)
        self.last_frame = -1
        self._append(model.embed.weight[SPECIAL_IDS["bos"]][None], torch.tensor([-1]), -1, TEXT)

    def new_cache(self, capacity: int) -> KVCache:
        return self.model.new_cache(1, capacity=capacity)

    @property
    def opening(self) -> int:
        """Slots before the first frame (here `<bos>`); sinks always include them."""
        return 1

    # -- reading ----------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self.cache.length

    def frames(self) -> torch.Tensor:
        """(length,) frame index of every slot (-1 for <bos>)."""
        return self.cache[0].view().frame[0, 0].cpu()

    def layer_stores(self, select: torch.Tensor | None = None) -> list[Store]:
        """Per layer, the slots where `select` (length,) is True (all slots when None), as copies."""
        out = []
        for layer in self.cache.layers:
            view = layer.view()
            if select is None:
                out.append(Store(**{f: t.clone() for f, t in view.tensors().items()}))
            else:
                index = torch.nonzero(select.to(view.keys.device)).flatten().view(1, 1, -1).expand(1, view.keys.shape[1], -1)
                out.append(view.gather(index))
        return out

    # -- writing ----------------------------------------------------------------------------
    def _append(self, embeds: torch.Tensor, patch: torch.Tensor, frame: int, first_modality: int) -> None:
        n = embeds.shape[0]
        device = embeds.device
        start = int(self.cache.next_position[0])
        modality = torch.full((1, n), VISUAL, dtype=torch.long, device=device)
        modality[0, 0] = first_modality
        token_ids = torch.full((1, n), -1, dtype=torch.long, device=device)
        if first_modality == TEXT:
            token_ids[0, 0] = SPECIAL_IDS["img"] if frame >= 0 else SPECIAL_IDS["bos"]
        inputs = Inputs(
            embeds[None], torch.arange(start, start + n, device=device)[None], modality,
            torch.full((1, n), frame, dtype=torch.long, device=device), token_ids,
        )
        self.model(inputs, self.cache)
        self.patch = torch.cat([self.patch, patch])

    @torch.no_grad()
    def append_frame(self, visual: torch.Tensor, patches: torch.Tensor, frame: int) -> int:
        """Prefill `<img>` and the visual tokens (n, lm_dim) of patches `patches` (n,) of `frame`.
        Returns how many cached entries the frame's queries attended (its ingest cost)."""
        if frame <= self.last_frame:
            raise StreamMemoryError(f"frame {frame} arrives after frame {self.last_frame}; frames must come in order")
        img = self.model.embed.weight[SPECIAL_IDS["img"]][None]
        self._append(torch.cat([img, visual]), torch.cat([torch.tensor([-1]), patches.cpu()]), frame, TEXT)
        self.last_frame = frame
        return self.length

    def keep(self, keep: torch.Tensor) -> None:
        """Keep the slots where `keep` (length,) is True in every layer and head, release the rest,
        and re-assign positions 0..n-1 by slot order."""
        if keep.shape != (self.length,):
            raise StreamMemoryError(f"keep mask has shape {tuple(keep.shape)}, the cache has {self.length} slots")
        if bool(keep.all()):
            return
        mask = keep.view(1, 1, -1).expand(1, self.cache[0].kv_heads, -1)
        for layer in self.cache.layers:
            layer.keep(mask)
            layer.compact(reserve=self.reserve)
        self.patch = self.patch[keep.cpu()]
        self.reposition(self.cache)

    def reposition(self, cache: KVCache) -> None:
        """Rotate every key of `cache` to position = slot index; the next entry goes after them."""
        for layer in cache.layers:
            view = layer.view()
            new = torch.arange(layer.length, device=view.keys.device).expand_as(view.position)
            view.keys.copy_(rotate(view.keys, new - view.position, self.theta))
            view.position.copy_(new)
        cache.next_position.fill_(cache.length)

    # -- questions ----------------------------------------------------------------------------
    def build(self, parts: list[list[Store]], extra: int) -> KVCache:
        """A fresh cache holding, per layer, the concatenation of `parts` (each a per-layer list
        of stores, head-uniform metadata) with positions re-assigned, and room for `extra` more."""
        n = sum(p[0].keys.shape[2] for p in parts)
        cache = self.new_cache(n + extra)
        for i, layer in enumerate(cache.layers):
            s = cat_stores([p[i] for p in parts]) if len(parts) > 1 else parts[0][i]
            layer.append(s.keys, s.values, s.position[:, 0], s.modality[:, 0].long(), s.frame[:, 0])
            layer.hot.position[:, :, : layer.length] = s.position
        self.reposition(cache)
        return cache

    def fork(self, extra: int) -> KVCache:
        """A copy of the working cache with room for `extra` more entries."""
        return self.build([self.layer_stores()], extra)

    # -- the model --------------------------------------------------------------------------------
    def encode_frame(self, pixels: torch.Tensor, time: float) -> torch.Tensor:
        """(3, H, W) pixels shown at `time` -> (patches, dim) visual tokens, patches in raster order."""
        return self.model.encode_visual(pixels[None], torch.tensor([time], device=pixels.device))[0]

    def question_ids(self, question: tuple[str, ...]) -> list[int]:
        """A question's tokens, ending with the token the answer starts after."""
        return self.tok.encode(question) + [self.tok.ans_id]

    def question_queries(self, cache: KVCache, question_ids: list[int]) -> list[torch.Tensor]:
        """Decode `question_ids` into `cache` and return every layer's queries for them before
        RoPE, (batch, n, heads, head_dim) each."""
        with capture_queries(self.model) as queries:
            self.model.decode(torch.tensor([question_ids], device=cache.next_position.device), cache)
        return queries

    @torch.no_grad()
    def answer(self, cache: KVCache, question_ids: list[int], max_new_tokens: int) -> tuple[float, tuple[str, ...]]:
        """Greedy answer to `question_ids` read against `cache` (which it extends). Returns the
        `time.perf_counter()` at which the first answer token was known, and the answer's words."""
        logits = self.model.decode(torch.tensor([question_ids], device=cache.next_position.device), cache).logits[:, -1]
        first = time.perf_counter()
        return first, tuple(self.tok.decode(self.model.greedy_continue(logits, cache, max_new_tokens)).split())


@contextmanager
def capture_queries(model: LVLM):
    """Collect every layer's query projections before RoPE: a list (per layer) of (batch, T,
    heads, head_dim) tensors, filled while the context is open."""
    queries: list[torch.Tensor] = [None] * len(model.blocks)  # type: ignore[list-item]
    hooks = []
    for i, block in enumerate(model.blocks):
        heads, head_dim = block.attn.heads, block.attn.head_dim

        def hook(_module, _args, out, i=i, heads=heads, head_dim=head_dim):
            queries[i] = out.view(out.shape[0], out.shape[1], heads, head_dim).detach()

        hooks.append(block.attn.q.register_forward_hook(hook))
    try:
        yield queries
    finally:
        for h in hooks:
            h.remove()

