"""The reference LVLM, end to end in one file.

pixels (units, 3, H, W) --ViT--> patch features --adapter (optional k x k pooling, MLP, frame-time
embedding)--> visual tokens, each plus the embeddings of the words that name its place (optional,
`place_embedding`), spliced into the text sequence

    <bos> (<img> visual tokens) per image or frame, then question tokens <ans> answer tokens <eos>

and read by a decoder-only LM: RoPE, grouped-query attention through
`scaled_dot_product_attention`, RMSNorm, SwiGLU, tied embeddings. Prefill and decode go through an
explicit `KVCache` (kvcache.py). With `need_attn=True` every layer also returns its attention
weights per query head, computed explicitly (slower; the default path never materialises them);
`need_attn={layer: heads}` computes just those heads' weights, beside the fast path, and with
`attn_rows` only for the query positions a loss needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pilot_experiments.kvcache import TEXT, VISUAL, KVCache

SPECIAL_IDS = {"pad": 0, "bos": 1, "eos": 2, "ans": 3, "img": 4}  # the SynthVis tokenizer's order


class ModelError(ValueError):
    """A model request that cannot work (unknown size, image not a multiple of the patch, ...)."""


@dataclass(frozen=True)
class LVLMConfig:
    name: str
    vocab_size: int = 78  # the SynthVis tokenizer's; `config_for` sets it from the tokenizer
    patch_px: int = 4
    vit_dim: int = 128
    vit_layers: int = 2
    vit_heads: int = 4
    lm_dim: int = 128
    lm_layers: int = 4
    lm_heads: int = 4
    lm_kv_heads: int = 2
    rope_theta: float = 10000.0
    max_frame_time: float = 20000.0
    norm_eps: float = 1e-5
    # token ids of the words that name the picture's bands, top to bottom and left to right
    # (SynthVis: top/middle/bottom, left/centre/right); empty: visual tokens carry no place words
    place_words: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def __post_init__(self) -> None:  # a config read back from JSON holds lists
        object.__setattr__(self, "place_words", tuple(tuple(ids) for ids in self.place_words))

    @property
    def head_dim(self) -> int:
        return self.lm_dim // self.lm_heads

    def to_dict(self) -> dict:
        return asdict(self)


# Parameters: draft 1.02 M, target 3.08 M, large 87.7 M. The target is smaller than a 10-30 M plan
# because it must train to the cpu preset's bars (caption F1 and VQA >= 0.9) in about 10 minutes on
# 2 cores. A 12.3 M variant (lm_dim 512, 4 layers, 8 heads), trained on the same preset on the same
# machine, took 0.69 s a step against 0.30 s, and after 2000 steps (1391 s) had caption F1 0.834 and
# VQA 0.930, still under the bar that this target clears in 1600 steps and 644 s.
CONFIGS = {
    "draft": LVLMConfig("draft", vit_dim=96, vit_layers=2, vit_heads=4, lm_dim=128, lm_layers=4, lm_heads=4, lm_kv_heads=2),
    "target": LVLMConfig("target", vit_dim=128, vit_layers=3, vit_heads=4, lm_dim=192, lm_layers=6, lm_heads=6, lm_kv_heads=2),
    "large": LVLMConfig("large", vit_dim=384, vit_layers=6, vit_heads=6, lm_dim=768, lm_layers=12, lm_heads=12, lm_kv_heads=4),
}


def config_for(size: str, vocab_size: int) -> LVLMConfig:
    if size not in CONFIGS:
        raise ModelError(f"unknown model size {size!r}; choose one of {list(CONFIGS)}")
    from dataclasses import replace

    return replace(CONFIGS[size], vocab_size=vocab_size)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """An embedded sequence: embeds (batch, T, lm_dim); positions, modality, frame, token_ids
    (batch, T) long (token_ids is -1 on visual tokens, frame -1 on text outside an image)."""

    embeds: torch.Tensor
    positions: torch.Tensor
    modality: torch.Tensor
    frame: torch.Tensor
    token_ids: torch.Tensor

    @property
    def length(self) -> int:
        return self.embeds.shape[1]


@dataclass
class Output:
    """logits (batch, T, vocab); attn: per layer (batch, heads asked, T, L) weights when asked
    (None for the layers not asked), else None;
    hidden: the final normed hidden states (batch, T, lm_dim)."""

    logits: torch.Tensor
    hidden: torch.Tensor
    attn: list[torch.Tensor] | None = None


# ----------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate pairs (first half, second half) of x (batch, heads, T, d) by position (batch, T)."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) / (d // 2))
    angles = positions.float().unsqueeze(-1) * freqs  # (batch, T, d/2)
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def sinusoid(values: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """(..., dim) sin/cos features of real values (frame times, patch rows and columns)."""
    freqs = max_period ** (-torch.arange(0, dim // 2, device=values.device, dtype=torch.float32) / (dim // 2))
    angles = values.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def _hidden(dim: int) -> int:
    return 32 * math.ceil(dim * 8 / 3 / 32)


def _band_weights(cells: int, bands: int, device) -> torch.Tensor:
    """(cells, bands): linear interpolation weights of each cell centre between the centres of
    `bands` equal bands of a line of `cells` cells (clamped at the ends); rows sum to 1."""
    x = (torch.arange(cells, device=device, dtype=torch.float32) + 0.5) / cells
    centres = (torch.arange(bands, device=device, dtype=torch.float32) + 0.5) / bands
    x = x.clamp(float(centres[0]), float(centres[-1]))
    return (1 - (x[:, None] - centres[None, :]).abs() * bands).clamp_min(0)


# ----------------------------------------------------------------------------- vision


class ViTBlock(nn.Module):
    """Pre-norm transformer block with bidirectional attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    """Patchify -> linear -> + 2D sinusoidal patch position (any grid size) -> pre-norm blocks."""

    def __init__(self, cfg: LVLMConfig) -> None:
        super().__init__()
        self.patch = cfg.patch_px
        self.embed = nn.Linear(3 * cfg.patch_px**2, cfg.vit_dim)
        self.blocks = nn.ModuleList(ViTBlock(cfg.vit_dim, cfg.vit_heads) for _ in range(cfg.vit_layers))
        self.norm = nn.LayerNorm(cfg.vit_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (n, 3, H, W) in [0, 1] -> (n, H/p * W/p, vit_dim), patches in raster order."""
        n, c, h, w = pixels.shape
        p = self.patch
        if h % p or w % p:
            raise ModelError(f"image size {h}x{w} is not a multiple of the {p}-pixel patch")
        gh, gw = h // p, w // p
        patches = pixels.view(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
        rows, cols = torch.meshgrid(torch.arange(gh, device=pixels.device), torch.arange(gw, device=pixels.device), indexing="ij")
        d = self.embed.out_features
        pos = torch.cat([sinusoid(rows.flatten(), d // 2, 100.0), sinusoid(cols.flatten(), d // 2, 100.0)], dim=-1)
        x = self.embed(patches * 2 - 1) + pos.to(patches.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class Adapter(nn.Module):
    """Optional k x k average pooling of the patch grid (so the visual tokens per image can vary),
    then an MLP into the LM width, plus an embedding of the frame time."""

    def __init__(self, cfg: LVLMConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cfg.vit_dim, cfg.lm_dim), nn.GELU(), nn.Linear(cfg.lm_dim, cfg.lm_dim))
        self.time = nn.Linear(cfg.lm_dim, cfg.lm_dim)
        self.max_time = cfg.max_frame_time

    def forward(self, feats: torch.Tensor, grid: tuple[int, int], times: torch.Tensor, pool: int = 1) -> torch.Tensor:
        """feats (n, gh*gw, vit_dim), times (n,) -> (n, (gh/pool)*(gw/pool), lm_dim)."""
        if pool > 1:
            n, _, d = feats.shape
            g = feats.transpose(1, 2).reshape(n, d, *grid)
            feats = F.avg_pool2d(g, pool).flatten(2).transpose(1, 2)
        x = self.mlp(feats)
        t = self.time(sinusoid(times, x.shape[-1], self.max_time).to(x.dtype))
        return x + t.unsqueeze(1)


# ----------------------------------------------------------------------------- language model


class Attention(nn.Module):
    def __init__(self, cfg: LVLMConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.lm_heads, cfg.lm_kv_heads, cfg.head_dim
        self.theta = cfg.rope_theta
        self.q = nn.Linear(cfg.lm_dim, cfg.lm_heads * cfg.head_dim, bias=False)
        self.kv = nn.Linear(cfg.lm_dim, 2 * cfg.lm_kv_heads * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.lm_heads * cfg.head_dim, cfg.lm_dim, bias=False)

    def forward(self, x, inputs: Inputs, layer_cache, attn_bias, need_attn, attn_rows=None):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = rope(q, inputs.positions, self.theta), rope(k, inputs.positions, self.theta)
        if layer_cache is None:
            mask = attn_bias
            if mask is not None:
                causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
                mask = mask.masked_fill(~causal, float("-inf"))
        else:
            layer_cache.append(k, v, inputs.positions, inputs.modality, inputs.frame)
            if layer_cache.quant and not need_attn:  # quantized blocks stay quantized: chunked attention
                out = layer_cache.attend(q, t, self.head_dim ** -0.5)
                return self.o(out.transpose(1, 2).reshape(b, t, -1)), None
            k, v, mask = layer_cache.read(t)
        group = self.heads // self.kv_heads
        if mask is not None:  # one mask for every head broadcasts; one per kv head is repeated per query head
            mask = mask.to(q.dtype)
            mask = mask if mask.shape[1] == 1 else mask.repeat_interleave(group, dim=1)
        weights = None
        if need_attn is True:
            kk, vv = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            weights = self._weights(q, kk, mask, torch.arange(t, device=x.device).expand(b, -1), t)
            out = (weights @ vv.float()).to(q.dtype)
        else:
            causal = mask is None and t > 1
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
            if need_attn:  # just these query heads' weights (at these rows), beside the fast path's output
                heads = torch.tensor(list(need_attn), device=x.device)
                q_rows, rows = q[:, heads], torch.arange(t, device=x.device).expand(b, -1)
                head_mask = None if mask is None else mask if mask.shape[1] == 1 else mask[:, heads]
                if attn_rows is not None:
                    rows = attn_rows
                    q_rows = q_rows.gather(2, rows[:, None, :, None].expand(-1, len(heads), -1, self.head_dim))
                    if head_mask is not None:
                        head_mask = head_mask.gather(2, rows[:, None, :, None].expand(-1, head_mask.shape[1], -1, head_mask.shape[-1]))
                weights = self._weights(q_rows, k[:, heads // group], head_mask, rows, t)
        return self.o(out.transpose(1, 2).reshape(b, t, -1)), weights

    def _weights(self, q, k, mask, rows, t):
        """softmax(q k^T / sqrt(d) + mask) in fp32 for the queries q (batch, heads, R, d) at `rows`
        (batch, R) of this call's `t` new tokens, the last `t` of the keys; causal when `mask` is None."""
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is None:
            future = torch.arange(k.shape[-2], device=q.device) > (rows + k.shape[-2] - t)[..., None]
            mask = torch.zeros_like(scores).masked_fill_(future[:, None], float("-inf"))
        return torch.softmax(scores + mask.float(), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: LVLMConfig) -> None:
        super().__init__()
        self.attn_norm, self.mlp_norm = RMSNorm(cfg.lm_dim, cfg.norm_eps), RMSNorm(cfg.lm_dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp = SwiGLU(cfg.lm_dim, _hidden(cfg.lm_dim))

    def forward(self, x, inputs, layer_cache, attn_bias, need_attn, attn_rows=None):
        h, weights = self.attn(self.attn_norm(x), inputs, layer_cache, attn_bias, need_attn, attn_rows)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), weights


class LVLM(nn.Module):
    def __init__(self, cfg: LVLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg)
        self.adapter = Adapter(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.lm_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.lm_layers))
        self.norm = RMSNorm(cfg.lm_dim, cfg.norm_eps)
        self.apply(self._init)
        # patch content must not drown under the position signal, nor visual tokens under the
        # (constant per frame) time embedding, or the LM cannot tell patches apart at the start
        nn.init.normal_(self.vision.embed.weight, std=self.vision.embed.in_features**-0.5)
        nn.init.zeros_(self.adapter.time.weight)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def param_counts(self) -> dict[str, int]:
        parts = {"vision": self.vision, "adapter": self.adapter, "embed": self.embed, "lm": self.blocks}
        counts = {k: sum(p.numel() for p in v.parameters()) for k, v in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    # -- inputs -------------------------------------------------------------------------------
    def encode_visual(self, pixels: torch.Tensor, times: torch.Tensor, pool: int = 1) -> torch.Tensor:
        """pixels (n, 3, H, W), times (n,) -> visual tokens (n, Np, lm_dim)."""
        p = self.cfg.patch_px
        grid = (pixels.shape[2] // p, pixels.shape[3] // p)
        tokens = self.adapter(self.vision(pixels), grid, times, pool)
        return tokens + self.place_embedding((grid[0] // pool, grid[1] // pool)).to(tokens.dtype)

    def place_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(gh*gw, lm_dim): what each visual token of a (gh, gw) grid adds to say where it is, in the
        LM's own words: the embeddings of the `place_words` of its row and column, blended linearly
        between the bands' centres, so that the mean over an object's tokens names the band of the
        object's centre. An attention head that gathers an object's tokens then reads its place the
        way it reads its colour, through the tied embeddings (as location tokens do in Kosmos-2,
        Peng et al. 2023, "Grounding Multimodal Large Language Models to the World"); RoPE alone
        only steers which tokens a head reads, never what it reads. Zeros without place words."""
        table = self.embed.weight
        if not all(self.cfg.place_words):
            return table.new_zeros(grid[0] * grid[1], table.shape[1])
        # each word less what the band's words share (learned column words drift to a cosine of
        # about 0.75 with each other, and what they share says nothing about the place), then at
        # RMS 1 per dimension, the scale of a token after RMSNorm: at the words' own scale the
        # place is a few per cent of a visual token, and the LM never learns to read it
        words = [table[list(ids)] for ids in self.cfg.place_words]
        words = [F.normalize(w - w.mean(0), dim=-1) * math.sqrt(table.shape[1]) for w in words]
        bands = [_band_weights(n, len(w), table.device) @ w for n, w in zip(grid, words)]
        return (bands[0][:, None] + bands[1][None, :]).flatten(0, 1)

    def embed_prompt(self, pixels: torch.Tensor, times: torch.Tensor, text_ids: torch.Tensor, pool: int = 1, start: int = 0) -> Inputs:
        """Lay out `<bos> (<img> visual tokens)* text` for a batch.

        pixels (batch, units, 3, H, W); times (batch, units) frame index of each unit; text_ids
        (batch, Tt) (right-padded with <pad> for training). Positions start at `start`."""
        b, u = pixels.shape[:2]
        device = pixels.device
        vis = self.encode_visual(pixels.flatten(0, 1).to(self.embed.weight.dtype), times.flatten(), pool)
        nv = vis.shape[1]
        vis = vis.view(b, u, nv, -1)
        img = self.embed.weight[SPECIAL_IDS["img"]].expand(b, u, 1, -1)
        units = torch.cat([img, vis], dim=2).flatten(1, 2)  # (b, u*(1+nv), d)
        bos = self.embed.weight[SPECIAL_IDS["bos"]].expand(b, 1, -1)
        embeds = torch.cat([bos, units, self.embed(text_ids)], dim=1)
        t_total = embeds.shape[1]
        unit_len = 1 + nv
        modality = torch.full((b, t_total), TEXT, dtype=torch.long, device=device)
        frame = torch.full((b, t_total), -1, dtype=torch.long, device=device)
        token_ids = torch.full((b, t_total), -1, dtype=torch.long, device=device)
        span = slice(1, 1 + u * unit_len)
        modality[:, span] = torch.tensor([TEXT] + [VISUAL] * nv, device=device).repeat(u)
        frame[:, span] = times.to(device).repeat_interleave(unit_len, dim=1)
        token_ids[:, 0] = SPECIAL_IDS["bos"]
        token_ids[:, span] = torch.tensor([SPECIAL_IDS["img"]] + [-1] * nv, device=device).repeat(u)
        token_ids[:, 1 + u * unit_len :] = text_ids
        positions = torch.arange(start, start + t_total, device=device).expand(b, -1)
        return Inputs(embeds, positions, modality, frame, token_ids)

    def embed_tokens(self, token_ids: torch.Tensor, positions: torch.Tensor) -> Inputs:
        """Text-only continuation: token_ids, positions (batch, n)."""
        modality = torch.full_like(token_ids, TEXT)
        return Inputs(self.embed(token_ids), positions, modality, torch.full_like(token_ids, -1), token_ids)

    # -- running --------------------------------------------------------------------------------
    def forward(
        self, inputs: Inputs, cache: KVCache | None = None, *, attn_bias=None, need_attn: bool | Mapping[int, Sequence[int]] = False,
        attn_rows: torch.Tensor | None = None,
    ) -> Output:
        """Run the LM over `inputs`. Without a cache: causal attention over the sequence, plus an
        optional additive `attn_bias` (batch, kv_heads, T, T), or (batch, 1, T, T) for every head
        alike, or a list of one per layer. With a cache: the new entries are appended and attention
        covers every valid cached entry.
        `need_attn`: True for every layer's attention weights, or {layer: query heads} for just
        those heads' weights (batch, len(heads), T, L), computed beside the fast path; None in
        `Output.attn` for the layers not asked. `attn_rows` (batch, R) long: with a mapping, those
        heads' weights for just the queries at these indices of `inputs` (batch, len(heads), R, L),
        for a loss on a few rows (training's grounding), at a fraction of the T x L cost."""
        x = inputs.embeds
        attn = [] if need_attn else None
        for i, block in enumerate(self.blocks):
            bias = attn_bias[i] if isinstance(attn_bias, (list, tuple)) else attn_bias
            wanted = need_attn if isinstance(need_attn, bool) else need_attn.get(i, ())
            x, weights = block(x, inputs, None if cache is None else cache[i], bias, wanted, attn_rows)
            if need_attn:
                attn.append(weights)
        if cache is not None:
            cache.next_position = inputs.positions[:, -1] + 1
        h = self.norm(x)
        return Output(h @ self.embed.weight.T, h, attn)

    def new_cache(self, batch: int = 1, capacity: int = 256, **kwargs) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.cfg.lm_layers, batch, self.cfg.lm_kv_heads, self.cfg.head_dim, dtype=p.dtype, device=p.device, capacity=capacity, **kwargs)

    def prefill(self, inputs: Inputs, cache: KVCache, *, need_attn: bool = False) -> Output:
        return self.forward(inputs, cache, need_attn=need_attn)

    def decode(self, token_ids: torch.Tensor, cache: KVCache, *, positions: torch.Tensor | None = None, need_attn: bool = False) -> Output:
        """Append tokens (batch, n) at `positions` (default: right after the last cached one)."""
        if positions is None:
            n = token_ids.shape[1]
            positions = cache.next_position.unsqueeze(1) + torch.arange(n, device=token_ids.device)
        return self.forward(self.embed_tokens(token_ids, positions), cache, need_attn=need_attn)

    @torch.no_grad()
    def generate(self, inputs: Inputs, max_new_tokens: int, cache: KVCache | None = None) -> list[int]:
        """Greedy decoding of a batch-1 prompt until <eos>; returns the new tokens (no <eos>)."""
        cache = cache if cache is not None else self.new_cache(1, capacity=inputs.length + max_new_tokens)
        return self.greedy_continue(self.prefill(inputs, cache).logits[:, -1], cache, max_new_tokens)

    @torch.no_grad()
    def greedy_continue(self, logits: torch.Tensor, cache: KVCache, max_new_tokens: int) -> list[int]:
        """Greedy decoding from next-token `logits` (1, vocab) of a prefilled batch-1 cache."""
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax(-1))
            if token == SPECIAL_IDS["eos"]:
                break
            out.append(token)
            logits = self.decode(torch.tensor([[token]], device=logits.device), cache).logits[:, -1]
        return out
