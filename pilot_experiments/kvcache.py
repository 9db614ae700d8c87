"""An explicit, editable KV cache for the reference LVLM.

Every layer keeps its entries in up to three stores:

- the hot store: preallocated full-precision tensors `keys`, `values`: (batch, kv_heads, capacity,
  head_dim), of which the first `length` slots are in use;
- quantized blocks: entries moved out of the hot store into int8 or packed int4 codes with one
  scale per (batch, head, channel) and block, dequantized on read;
- the offload store: entries moved to a slower device (CPU memory when the model runs on a GPU),
  not attended until fetched back into the hot store.

Each entry carries metadata: `position` (its original sequence position), `modality`
(`TEXT` or `VISUAL`), `frame` (frame / image index, -1 for text without one), `count` (how many
original entries it stands for after merging) and `valid`. All per-head operations take boolean
masks shaped (batch, kv_heads, length) over the hot store; a removed entry is only marked invalid
(an additive -inf in that head's attention, like kvpress's AdaKV press) until `compact` gathers
every head's valid entries to the per-layer maximum and frees the rest.

Attention reads the hot store first, then the quantized blocks: columns [0, length) of the
attention weights the model returns are hot slots, in slot order. `read` hands the model every
entry in full precision (needed where attention weights are observed); `attend` computes the
attention output itself and dequantizes the quantized blocks `QUANT_CHUNK` entries at a time, so a
quantized cache stays quantized at the peak of a decode step too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

TEXT, VISUAL = 0, 1
QUANT_CHUNK = 512  # quantized entries `attend` dequantizes at a time: its transient full-precision copy
MODALITY_NAMES = {TEXT: "text", VISUAL: "visual"}


class KVCacheError(ValueError):
    """An impossible cache operation (wrong mask shape, unsupported bit width, empty selection)."""


META_FIELDS = ("position", "modality", "frame", "count", "valid")


@dataclass
class Store:
    """Keys, values and metadata of a set of entries: tensors (batch, kv_heads, n[, head_dim])."""

    keys: torch.Tensor
    values: torch.Tensor
    position: torch.Tensor
    modality: torch.Tensor
    frame: torch.Tensor
    count: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(cls, batch: int, heads: int, n: int, head_dim: int, dtype: torch.dtype, device) -> Store:
        meta = {"dtype": torch.long, "device": device}
        return cls(
            torch.zeros(batch, heads, n, head_dim, dtype=dtype, device=device),
            torch.zeros(batch, heads, n, head_dim, dtype=dtype, device=device),
            torch.zeros(batch, heads, n, **meta),
            torch.zeros(batch, heads, n, dtype=torch.uint8, device=device),
            torch.full((batch, heads, n), -1, **meta),
            torch.ones(batch, heads, n, **meta),
            torch.zeros(batch, heads, n, dtype=torch.bool, device=device),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in ("keys", "values", *META_FIELDS)}

    def slice(self, n: int) -> Store:
        return Store(**{f: t[:, :, :n] for f, t in self.tensors().items()})

    def gather(self, index: torch.Tensor) -> Store:
        """Entries at `index` (batch, heads, m) of every head."""
        out = {}
        for f, t in self.tensors().items():
            idx = index if t.dim() == 3 else index.unsqueeze(-1).expand(-1, -1, -1, t.shape[-1])
            out[f] = t.gather(2, idx)
        return Store(**out)

    def to(self, device) -> Store:
        return Store(**{f: t.to(device) for f, t in self.tensors().items()})

    def nbytes(self, *, with_metadata: bool = False) -> int:
        names = ("keys", "values", *(META_FIELDS if with_metadata else ()))
        return sum(getattr(self, f).nbytes for f in names)


def cat_stores(stores: list[Store]) -> Store:
    return Store(**{f: torch.cat([getattr(s, f) for s in stores], dim=2) for f in ("keys", "values", *META_FIELDS)})


def select_per_head(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a (batch, heads, n) mask, the indices of each head's selected entries padded to the
    largest count, and a mask of which padded indices are real."""
    n_max = int(select.sum(-1).max()) if select.numel() else 0
    order = torch.argsort((~select).to(torch.int8), dim=-1, stable=True)[..., :n_max]
    return order, select.gather(-1, order)


@dataclass
class QuantBlock:
    """Entries quantized symmetric per channel: x ~= code * scale, scale per (batch, head, channel)."""

    bits: int
    key_codes: torch.Tensor
    value_codes: torch.Tensor
    key_scale: torch.Tensor
    value_scale: torch.Tensor
    meta: Store  # keys/values of this Store are empty placeholders (0 channels)
    head_dim: int

    @classmethod
    def quantize(cls, store: Store, bits: int) -> QuantBlock:
        if bits not in (4, 8):
            raise KVCacheError(f"quantization supports 4 or 8 bits, not {bits}")
        kc, ks = _quantize(store.keys, store.valid, bits)
        vc, vs = _quantize(store.values, store.valid, bits)
        empty = store.keys[..., :0]
        meta = Store(empty, empty, store.position, store.modality, store.frame, store.count, store.valid)
        return cls(bits, kc, vc, ks, vs, meta, store.keys.shape[-1])

    def dequantize(self, dtype: torch.dtype) -> Store:
        keys = _dequantize(self.key_codes, self.key_scale, self.bits, self.head_dim).to(dtype)
        values = _dequantize(self.value_codes, self.value_scale, self.bits, self.head_dim).to(dtype)
        m = self.meta
        return Store(keys, values, m.position, m.modality, m.frame, m.count, m.valid)

    def dequantize_slice(self, start: int, stop: int) -> Store:
        """Entries [start, stop) in float32, with their metadata (what `LayerCache.attend` reads)."""
        m = self.meta
        keys = _dequantize(self.key_codes[:, :, start:stop], self.key_scale, self.bits, self.head_dim)
        values = _dequantize(self.value_codes[:, :, start:stop], self.value_scale, self.bits, self.head_dim)
        return Store(keys, values, *(getattr(m, f)[:, :, start:stop] for f in META_FIELDS))

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.key_codes, self.value_codes, self.key_scale, self.value_scale))


def _quantize(x: torch.Tensor, valid: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    qmax = 2 ** (bits - 1) - 1
    amax = (x.float().abs() * valid.unsqueeze(-1)).amax(dim=2, keepdim=True)
    scale = (amax / qmax).clamp_min(1e-8)
    codes = torch.round(x.float() / scale).clamp(-qmax, qmax).to(torch.int8)
    if bits == 4:  # two signed nibbles per byte
        codes = codes + 8
        if codes.shape[-1] % 2:
            raise KVCacheError("int4 packing needs an even head_dim")
        codes = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return codes, scale


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, bits: int, head_dim: int) -> torch.Tensor:
    if bits == 4:
        low, high = (codes & 0xF).to(torch.int8) - 8, (codes >> 4).to(torch.int8) - 8
        codes = torch.stack([low, high], dim=-1).reshape(*codes.shape[:-1], head_dim)
    return codes.float() * scale


Softmax = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # running max, sum of exp, exp-weighted sum of values


def _softmax_part(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, group: int) -> Softmax:
    """One part of a softmax over several key sets: q (batch, kv_heads, group * n, d), already
    scaled; keys, values (batch, kv_heads, L, d); bias (batch, kv_heads, n or 1, L) additive."""
    scores = q @ keys.float().transpose(-1, -2)
    b, h, rows, length = scores.shape
    scores = (scores.view(b, h, group, rows // group, length) + bias.unsqueeze(2)).view(b, h, rows, length)
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row with nothing visible here
    weights = torch.exp(scores - top)
    return top, weights.sum(-1, keepdim=True), weights @ values.float()


def _combine(a: Softmax, b: Softmax) -> Softmax:
    top = torch.maximum(a[0], b[0])
    wa, wb = torch.exp(a[0] - top), torch.exp(b[0] - top)
    return top, a[1] * wa + b[1] * wb, a[2] * wa + b[2] * wb


class LayerCache:
    """One layer's cache: hot store, quantized blocks, offload store (see the module docstring)."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device, capacity: int, offload_device) -> None:
        self.batch, self.kv_heads, self.head_dim = batch, kv_heads, head_dim
        self.dtype, self.device, self.offload_device = dtype, torch.device(device), torch.device(offload_device)
        self.hot = Store.empty(batch, kv_heads, capacity, head_dim, dtype, device)
        self.length = 0
        self.quant: list[QuantBlock] = []
        self.offloaded: Store | None = None

    # -- views of the hot store -------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.hot.keys.shape[2]

    def view(self) -> Store:
        """The used part of the hot store (views, not copies)."""
        return self.hot.slice(self.length)

    # -- writing and reading ------------------------------------------------------------------
    def append(self, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor, modality: torch.Tensor, frame: torch.Tensor) -> None:
        """Add new entries: keys/values (batch, kv_heads, n, head_dim); metadata (batch, n)."""
        n = keys.shape[2]
        if self.length + n > self.capacity:
            self._grow(max(2 * self.capacity, self.length + n))
        s, e = self.length, self.length + n
        self.hot.keys[:, :, s:e] = keys
        self.hot.values[:, :, s:e] = values
        for name, meta in (("position", position), ("modality", modality), ("frame", frame)):
            getattr(self.hot, name)[:, :, s:e] = meta.unsqueeze(1)
        self.hot.count[:, :, s:e] = 1
        self.hot.valid[:, :, s:e] = True
        self.length = e

    def _grow(self, capacity: int) -> None:
        new = Store.empty(self.batch, self.kv_heads, capacity, self.head_dim, self.dtype, self.device)
        for f, t in self.view().tensors().items():
            getattr(new, f)[:, :, : self.length] = t
        self.hot = new

    def read(self, n_new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values (batch, kv_heads, L, head_dim) to attend and an additive mask
        (batch, kv_heads, n_new, L) for the last `n_new` appended entries as queries. The mask is
        None when plain causal attention is exact (every entry valid and, for several queries, no
        older entries), so the model can take the fast path. Quantized blocks come back dequantized
        in full: use `attend` where the attention weights are not needed."""
        stores = [self.view()] + [b.dequantize(self.dtype) for b in self.quant]
        store = stores[0] if len(stores) == 1 else cat_stores(stores)
        all_valid = bool(store.valid.all())
        if all_valid and (n_new == 1 or (n_new == self.length and not self.quant)):
            return store.keys, store.values, None
        return store.keys, store.values, self._mask(store.valid, n_new)

    def _mask(self, valid: torch.Tensor, n_new: int) -> torch.Tensor:
        """Additive (batch, kv_heads, n_new, L) mask: -inf on invalid entries and, among the last
        `n_new` hot slots (the queries themselves), on later ones."""
        visible = valid.unsqueeze(2).expand(-1, -1, n_new, -1).clone()
        if n_new > 1:
            i = torch.arange(n_new, device=self.device)
            visible[..., self.length - n_new : self.length] &= i.view(1, n_new) <= i.view(n_new, 1)
        return torch.zeros(visible.shape, dtype=torch.float32, device=self.device).masked_fill_(~visible, float("-inf"))

    def attend(self, query: torch.Tensor, n_new: int, scale: float) -> torch.Tensor:
        """softmax(q K^T * scale + mask) V for the last `n_new` appended entries as queries, over the
        hot store and every quantized block: query (batch, heads, n_new, head_dim), heads a multiple
        of kv_heads (grouped-query heads share a KV head in order). Returns (batch, heads, n_new,
        head_dim) in the query's dtype. Quantized entries, all older than the queries, are
        dequantized `QUANT_CHUNK` at a time and each chunk's softmax sums are combined by their
        running maximum, as FlashAttention combines blocks: the full-precision copy of the
        quantized part never exists at once."""
        b, heads, n, d = query.shape
        group = heads // self.kv_heads
        q = query.float().reshape(b, self.kv_heads, group * n, d) * scale
        hot = self.view()
        state = _softmax_part(q, hot.keys, hot.values, self._mask(hot.valid, n_new), group)
        for block in self.quant:
            for start in range(0, block.meta.valid.shape[2], QUANT_CHUNK):
                chunk = block.dequantize_slice(start, start + QUANT_CHUNK)
                bias = torch.zeros(chunk.valid.shape, device=self.device).masked_fill_(~chunk.valid, float("-inf"))
                state = _combine(state, _softmax_part(q, chunk.keys, chunk.values, bias.unsqueeze(2), group))
        _, total, out = state
        return (out / total.clamp_min(1e-30)).reshape(b, heads, n, d).to(query.dtype)

    # -- per-head editing ---------------------------------------------------------------------
    def _check(self, mask: torch.Tensor) -> torch.Tensor:
        want = (self.batch, self.kv_heads, self.length)
        if tuple(mask.shape) != want:
            raise KVCacheError(f"mask shape {tuple(mask.shape)} must be (batch, kv_heads, length) = {want}")
        return mask.to(device=self.device, dtype=torch.bool)

    def keep(self, keep: torch.Tensor) -> None:
        """Mask out (remove from attention) every hot entry where `keep` is False."""
        self.hot.valid[:, :, : self.length] &= self._check(keep)

    def remove(self, remove: torch.Tensor) -> None:
        self.keep(~self._check(remove))

    def compact(self, reserve: int = 0) -> None:
        """Gather each head's valid hot entries to the per-layer maximum (+ `reserve` free slots for
        decoding) and release the rest: this is what makes removal save memory."""
        index, _ = select_per_head(self.view().valid)
        kept = self.view().gather(index)
        n = kept.keys.shape[2]
        self.hot = Store.empty(self.batch, self.kv_heads, n + reserve, self.head_dim, self.dtype, self.device)
        for f, t in kept.tensors().items():
            getattr(self.hot, f)[:, :, :n] = t
        self.length = n

    def merge(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Merge entries into others, per head: hot slot `source[b, h, i]` goes into slot
        `target[b, h, i]` (both (batch, kv_heads, m) long; a slot must not be both). Each target
        becomes the count-weighted mean of itself and everything merged into it; sources are
        removed. Repeated merges therefore keep exact means of the original entries."""
        if source.shape != target.shape or source.dim() != 3:
            raise KVCacheError("source and target must both be (batch, kv_heads, m) index tensors")
        hot = self.view()
        count = hot.count.float()
        w_src = count.gather(2, source)
        total = count.scatter_add(2, target, w_src)
        for name in ("keys", "values"):
            t = getattr(hot, name)
            d = t.shape[-1]
            src_idx, dst_idx = source.unsqueeze(-1).expand(-1, -1, -1, d), target.unsqueeze(-1).expand(-1, -1, -1, d)
            acc = (t.float() * count.unsqueeze(-1)).scatter_add(2, dst_idx, t.float().gather(2, src_idx) * w_src.unsqueeze(-1))
            mean = acc.gather(2, dst_idx) / total.gather(2, target).unsqueeze(-1)
            t.scatter_(2, dst_idx, mean.to(t.dtype))
        hot.count.scatter_(2, target, total.gather(2, target).round().long())
        hot.valid.scatter_(2, source, False)

    def quantize(self, select: torch.Tensor, bits: int) -> None:
        """Move the selected valid hot entries into a quantized block (int8 or packed int4); the hot
        store is compacted afterwards, so hot slot indices change (metadata moves along)."""
        select = self._check(select) & self.view().valid
        if not bool(select.any()):
            raise KVCacheError("nothing selected to quantize")
        index, real = select_per_head(select)
        picked = self.view().gather(index)
        picked.valid = real
        self.quant.append(QuantBlock.quantize(picked, bits))
        self.remove(select)
        self.compact(reserve=self.capacity - self.length)

    def offload(self, select: torch.Tensor) -> None:
        """Move the selected valid hot entries to the offload device, where they are not attended;
        the hot store is compacted afterwards (hot slot indices change)."""
        select = self._check(select) & self.view().valid
        index, real = select_per_head(select)
        picked = self.view().gather(index)
        picked.valid = real
        picked = picked.to(self.offload_device)
        self.offloaded = picked if self.offloaded is None else cat_stores([self.offloaded, picked])
        self.remove(select)
        self.compact(reserve=self.capacity - self.length)

    def fetch(self, select: torch.Tensor) -> None:
        """Bring offloaded entries back into the hot store; `select` is (batch, kv_heads, n_offloaded)."""
        if self.offloaded is None:
            raise KVCacheError("nothing is offloaded in this layer")
        off = self.offloaded
        if tuple(select.shape) != tuple(off.valid.shape):
            raise KVCacheError(f"select shape {tuple(select.shape)} must match the offload store {tuple(off.valid.shape)}")
        select = select.to(off.valid.device) & off.valid
        index, real = select_per_head(select)
        back = off.gather(index).to(self.device)
        back.valid = real.to(self.device)
        off.valid &= ~select
        n = back.keys.shape[2]
        if self.length + n > self.capacity:
            self._grow(self.length + n)
        for f, t in back.tensors().items():
            getattr(self.hot, f)[:, :, self.length : self.length + n] = t
        self.length += n

    # -- accounting ---------------------------------------------------------------------------
    def entries(self) -> int:
        """Valid attended entries summed over batch and heads (hot + quantized)."""
        return int(self.view().valid.sum()) + sum(int(b.meta.valid.sum()) for b in self.quant)

    def logical_bytes(self) -> int:
        """Bytes the valid attended entries need at their precision (keys and values)."""
        per = 2 * self.head_dim * torch.finfo(self.dtype).bits // 8
        total = int(self.view().valid.sum()) * per
        for b in self.quant:
            total += int(b.meta.valid.sum()) * 2 * self.head_dim * b.bits // 8 + b.key_scale.nbytes + b.value_scale.nbytes
        return total

    def resident_bytes(self) -> int:
        """Bytes of key/value tensors allocated on the compute device (capacity, padding included)."""
        return self.hot.nbytes() + sum(b.nbytes() for b in self.quant)

    def offloaded_bytes(self) -> int:
        return 0 if self.offloaded is None else self.offloaded.nbytes()


@dataclass(frozen=True)
class CacheBytes:
    logical: int
    resident: int
    offloaded: int
    metadata: int


class KVCache:
    """All layers' caches plus the next free sequence position (per batch row)."""

    def __init__(
        self, n_layers: int, batch: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype = torch.float32,
        device="cpu", capacity: int = 256, offload_device="cpu",
    ) -> None:
        self.layers = [LayerCache(batch, kv_heads, head_dim, dtype, device, capacity, offload_device) for _ in range(n_layers)]
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def clone(self) -> KVCache:
        """An independent copy (e.g. to ask several questions after one shared visual prefill)."""
        return copy.deepcopy(self)

    def compact(self, reserve: int = 0) -> None:
        for layer in self.layers:
            layer.compact(reserve)

    def entries(self) -> int:
        return sum(layer.entries() for layer in self.layers)

    def bytes(self) -> CacheBytes:
        return CacheBytes(
            logical=sum(layer.logical_bytes() for layer in self.layers),
            resident=sum(layer.resident_bytes() for layer in self.layers),
            offloaded=sum(layer.offloaded_bytes() for layer in self.layers),
            metadata=sum(sum(getattr(layer.hot, f).nbytes for f in META_FIELDS) for layer in self.layers),
        )
