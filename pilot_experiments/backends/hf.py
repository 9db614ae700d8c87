"""A `transformers` checkpoint behind the backend interface: Qwen2.5-VL or any decoder-only LM.

The model's own code computes projections, RoPE, MLPs and norms; only the attention call is ours.
While the backend runs a forward pass, the text decoder's attention implementation is switched to
`pilot_kv`, an entry of transformers' `AttentionInterface` that appends the layer's new keys and
values to our explicit `KVCache` and attends to what the cache says is valid, head by head (the
per-head masks transformers' own caches cannot express; kvpress hooks the attention modules for
the same reason). Every cache policy and rollback of the studies therefore works unchanged, and
the weights are never touched. Outside the backend's calls the model runs as loaded, so
`model.generate` stays available as the ground truth.

Sliding-window layers and soft-capped attention logits are refused (the cache would have to know
each layer's window; our attention does not cap).
"""

from __future__ import annotations

import contextvars
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pilot_experiments.backends.base import BackendError
from pilot_experiments.kvcache import TEXT, VISUAL, KVCache
from pilot_experiments.model import Inputs, Output

ATTENTION_NAME = "pilot_kv"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("*.safetensors", "*.bin")


def check_checkpoint(path: str | Path) -> Path:
    """`path` as a checkpoint: a `.gguf` file, or a directory with `config.json` and weights; otherwise a
    `BackendError` that says what is missing."""
    path = Path(path)
    if not path.exists():
        raise BackendError(f"no checkpoint at {path}; pass a local directory or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise BackendError(f"{path} is a file but not a .gguf; pass the checkpoint's directory instead")
        return path
    if not (path / "config.json").exists() or not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise BackendError(f"{path} holds no config.json or no weights (*.safetensors); download the checkpoint into it first")
    return path


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise BackendError("the transformers backend needs the optional packages: pip install '.[hf]'") from err
    return transformers


@dataclass
class HFInputs(Inputs):
    """`Inputs` plus the multimodal RoPE positions of Qwen2.5-VL: rope_positions (batch, T, 3)
    (temporal, height, width), or None for a model with 1-D RoPE."""

    rope_positions: torch.Tensor | None = None


class HFKVCache(KVCache):
    """A `KVCache` that also remembers how far the model's RoPE positions run ahead of sequence
    positions after the prompt (Qwen2.5-VL packs an image's tokens into fewer RoPE positions)."""

    rope_delta: int = 0


@dataclass
class _Call:
    """What the attention function needs during one forward pass of the backend."""

    cache: KVCache
    inputs: Inputs
    need_attn: bool
    tap: HFQueryTap | None
    attn: list[torch.Tensor | None]


_ACTIVE: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("pilot_kv_call", default=None)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, scaling: float, need_attn: bool):
    """query (batch, heads, n, d); keys, values (batch, kv_heads, L, d); mask (batch, kv_heads, n, L)
    additive, or None for causal attention over the last n entries. Returns (batch, n, heads, d)
    and the weights (batch, heads, n, L) when asked."""
    n, group = query.shape[2], query.shape[1] // keys.shape[1]
    if mask is not None:
        mask = mask.to(query.dtype).repeat_interleave(group, dim=1)
    if not need_attn:
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=mask is None and n > 1, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2), None
    kk, vv = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = (query.float() @ kk.float().transpose(-1, -2)) * scaling
    if mask is None:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril(scores.shape[-1] - n)
        mask = torch.zeros(causal.shape, device=scores.device).masked_fill(~causal, float("-inf"))
    weights = torch.softmax(scores + mask.float(), dim=-1)
    return (weights @ vv.float()).to(query.dtype).transpose(1, 2), weights


def _rope_index(vlm, input_ids: torch.Tensor, visual: torch.Tensor, image_grid_thw: torch.Tensor):
    """Qwen2.5-VL's multimodal rotary positions. transformers >= 5.23 is told which tokens are visual
    (`mm_token_type_ids`); earlier 5.x releases find them by the image token id in `input_ids`."""
    if "mm_token_type_ids" in inspect.signature(vlm.get_rope_index).parameters:
        return vlm.get_rope_index(input_ids, mm_token_type_ids=visual.int(), image_grid_thw=image_grid_thw)
    return vlm.get_rope_index(input_ids, image_grid_thw=image_grid_thw)


def pilot_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """transformers attention function over the backend's `KVCache` (see the module docstring)."""
    call = _ACTIVE.get()
    if call is None:
        raise BackendError(f"the {ATTENTION_NAME!r} attention only runs inside an HFBackend call")
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise BackendError(f"{type(module).__name__} uses a sliding window or logit soft-capping, which this backend does not model")
    i = module.layer_idx
    if call.tap is not None:
        call.tap.latest[i] = query.detach()
    layer = call.cache[i]
    inputs = call.inputs
    layer.append(key, value, inputs.positions, inputs.modality, inputs.frame)
    if layer.quant and not call.need_attn:  # quantized blocks stay quantized: chunked attention
        call.attn[i] = None
        out = layer.attend(query, query.shape[2], scaling or query.shape[-1] ** -0.5)
        return out.transpose(1, 2).contiguous(), None
    keys, values, mask = layer.read(query.shape[2])
    out, weights = _attend(query, keys, values, mask, scaling or query.shape[-1] ** -0.5, call.need_attn)
    call.attn[i] = weights
    return out.contiguous(), weights


class HFQueryTap:
    """Context manager: while active, `latest[i]` holds layer i's last queries as the model
    computed them, already rotated (batch, heads, T, head_dim)."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend
        self.latest: list[torch.Tensor | None] = [None] * backend.n_layers

    def __enter__(self) -> HFQueryTap:
        self.backend._tap = self
        return self

    def __exit__(self, *exc) -> None:
        self.backend._tap = None

    def queries(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """The last `positions.shape[1]` tapped queries of a layer; they were rotated to these
        positions by the model itself."""
        q = self.latest[layer]
        if q is None:
            raise BackendError("no query was tapped; run the model inside `with backend.query_tap()`")
        n = positions.shape[1]
        if q.shape[2] < n:
            raise BackendError(f"asked for {n} queries but only {q.shape[2]} were tapped")
        return q[:, :, -n:]


def _register() -> None:
    tf = _transformers()
    tf.AttentionInterface.register(ATTENTION_NAME, pilot_attention)


class HFBackend:
    """A loaded `transformers` model: `Qwen2_5_VLForConditionalGeneration` or a causal LM.

    `model.get_decoder()` is the text decoder, `model.get_output_embeddings()` the LM head."""

    def __init__(self, model, tokenizer=None) -> None:
        _register()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_config = model.config.get_text_config()
        cfg = self.text_config
        if "sliding_attention" in (getattr(cfg, "layer_types", None) or []) and getattr(cfg, "use_sliding_window", True):
            raise BackendError(f"{type(model).__name__} uses sliding-window attention layers, which this backend does not model")
        self.n_layers, self.n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.image_token_id = getattr(model.config, "image_token_id", None)
        self.mrope = "mrope_section" in (getattr(cfg, "rope_parameters", None) or {})  # Qwen2.5-VL's (t, h, w) RoPE
        self._tap: HFQueryTap | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> HFBackend:
        """Load a checkpoint directory (config + safetensors) or a single `.gguf` file, with its
        tokenizer when one is there (else `tokenizer` is None)."""
        tf = _transformers()
        path = check_checkpoint(path)
        where, extra = (str(path.parent), {"gguf_file": path.name}) if path.is_file() else (str(path), {})
        config = tf.AutoConfig.from_pretrained(where, **extra)
        model_cls = tf.Qwen2_5_VLForConditionalGeneration if config.model_type == "qwen2_5_vl" else tf.AutoModelForCausalLM
        model = model_cls.from_pretrained(where, dtype=dtype, **extra).to(device)
        # transformers would otherwise make up an empty tokenizer for a directory without one
        has_tokenizer = path.is_file() or any((path / name).exists() for name in TOKENIZER_FILES)
        return cls(model, tf.AutoTokenizer.from_pretrained(where, **extra) if has_tokenizer else None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def new_cache(self, batch: int = 1, capacity: int = 256) -> HFKVCache:
        return HFKVCache(self.n_layers, batch, self.n_kv_heads, self.head_dim, dtype=self.dtype, device=self.device, capacity=capacity)

    # -- inputs -------------------------------------------------------------------------------
    def embed_tokens(self, token_ids: torch.Tensor, positions: torch.Tensor) -> HFInputs:
        embeds = self.model.get_input_embeddings()(token_ids)
        none = torch.full_like(token_ids, -1)
        return HFInputs(embeds, positions, torch.full_like(token_ids, TEXT), none, token_ids)

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """The vision tower and merger on the processor's patches: (visual tokens, hidden), every
        image's tokens in raster order of its merged grid, images one after another."""
        return torch.cat(self.model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True).pooler_output)

    def embed_prompt(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None) -> HFInputs:
        """A tokenized prompt (batch, T), with the image placeholders already expanded by the
        processor, and for Qwen2.5-VL the processor's `pixel_values` and `image_grid_thw`."""
        inputs = self.embed_tokens(input_ids, torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids))
        if pixel_values is None:
            return inputs
        if not self.mrope or self.image_token_id is None or image_grid_thw is None:
            raise BackendError("images need a vision-language checkpoint (Qwen2.5-VL) and the processor's image_grid_thw")
        vlm = self.model.model
        feats = self.encode_images(pixel_values, image_grid_thw)
        visual = input_ids == self.image_token_id
        if int(visual.sum()) != feats.shape[0]:
            raise BackendError(f"the prompt has {int(visual.sum())} image placeholders but the images give {feats.shape[0]} tokens")
        embeds = inputs.embeds.masked_scatter(visual.unsqueeze(-1), feats.to(inputs.embeds.dtype))
        rope, _ = _rope_index(vlm, input_ids, visual, image_grid_thw)
        per_image = (image_grid_thw.prod(-1) // vlm.visual.spatial_merge_size**2).tolist()
        frame = torch.full_like(input_ids, -1)
        frame[visual] = torch.repeat_interleave(torch.arange(len(per_image), device=input_ids.device), torch.tensor(per_image, device=input_ids.device))
        token_ids = input_ids.masked_fill(visual, -1)
        return HFInputs(embeds, inputs.positions, visual.long() * VISUAL, frame, token_ids, rope.permute(1, 2, 0))

    # -- running --------------------------------------------------------------------------------
    def _position_ids(self, inputs: Inputs, cache: KVCache) -> torch.Tensor:
        rope = getattr(inputs, "rope_positions", None)
        if rope is not None:
            return rope.permute(2, 0, 1)
        positions = inputs.positions + getattr(cache, "rope_delta", 0)
        if self.mrope:
            return positions.unsqueeze(0).expand(3, -1, -1)
        return positions

    @contextmanager
    def _bound(self, call: _Call):
        cfg = self.text_config
        previous = cfg._attn_implementation
        cfg._attn_implementation = ATTENTION_NAME
        token = _ACTIVE.set(call)
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            cfg._attn_implementation = previous

    @torch.no_grad()
    def forward(self, inputs: Inputs, cache: KVCache, *, need_attn: bool = False) -> Output:
        """Append `inputs` to `cache` and return logits, final hidden states and, when asked,
        each layer's attention weights."""
        call = _Call(cache, inputs, need_attn, self._tap, [None] * self.n_layers)
        with self._bound(call):
            out = self.decoder(inputs_embeds=inputs.embeds, position_ids=self._position_ids(inputs, cache), use_cache=False)
        rope = getattr(inputs, "rope_positions", None)
        if rope is not None and isinstance(cache, HFKVCache):
            cache.rope_delta = int(rope[0, -1, 0] - inputs.positions[0, -1])
        cache.next_position = inputs.positions[:, -1] + 1
        hidden = out.last_hidden_state
        return Output(self.lm_head(hidden).float(), hidden, call.attn if need_attn else None)

    def prefill(self, inputs: Inputs, cache: KVCache, *, need_attn: bool = False) -> Output:
        return self.forward(inputs, cache, need_attn=need_attn)

    def decode(self, token_ids: torch.Tensor, cache: KVCache, *, positions: torch.Tensor | None = None, need_attn: bool = False) -> Output:
        if positions is None:
            positions = cache.next_position.unsqueeze(1) + torch.arange(token_ids.shape[1], device=token_ids.device)
        return self.forward(self.embed_tokens(token_ids, positions), cache, need_attn=need_attn)

    def query_tap(self) -> HFQueryTap:
        return HFQueryTap(self)

