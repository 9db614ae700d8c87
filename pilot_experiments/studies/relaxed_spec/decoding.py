"""Autoregressive and speculative decoding of one prompt over the substrate's explicit KV caches,
for any backend (the reference LVLM itself, or one from `pilot_experiments.backends`).

Both loops start after the prefill, from the target's logits for the first answer token, and pass
sequence positions explicitly (the draft's pruned cache is shorter than the target's, but its
tokens keep the target's positions). Rejected tokens are rolled back by truncating the caches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pilot_experiments.backends.base import Backend
from pilot_experiments.kvcache import KVCache
from pilot_experiments.studies.relaxed_spec.rules import VerificationRule


class DecodingError(RuntimeError):
    """A decoding request the caches cannot serve (rolling back into compressed entries, gamma < 1)."""


def rollback(cache: KVCache, length: int, next_position: int) -> None:
    """Forget every hot entry from slot `length` on, in every layer, and set the next position.
    Only valid for caches that were appended to since their entries were last edited."""
    for layer in cache.layers:
        if layer.quant or layer.offloaded is not None or length > layer.length:
            raise DecodingError(f"cannot roll a layer of length {layer.length} back to {length} (it holds quantized or offloaded entries, or is too short)")
        layer.length = length
    cache.next_position.fill_(next_position)


def pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> tuple[int, torch.Tensor]:
    """Token chosen from logits (vocab,), greedy at temperature 0, and the distribution it came from."""
    probs = torch.softmax(logits.float() / (temperature or 1.0), dim=-1)
    if temperature == 0:
        return int(logits.argmax()), probs
    return int(torch.multinomial(probs.cpu(), 1, generator=generator)), probs


@dataclass
class DecodeStats:
    """Per verification step, the tokens it emitted (accepted + 1); every rejection as (draft token,
    target's replacement); and the time spent drafting and verifying."""

    emitted: list[int] = field(default_factory=list)
    rejected: list[tuple[int, int]] = field(default_factory=list)
    draft_calls: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0


def _tensor(tokens: list[int], device) -> torch.Tensor:
    return torch.tensor([tokens], device=device)


@torch.no_grad()
def autoregressive(target: Backend, cache: KVCache, first_logits: torch.Tensor, start: int, max_new: int, eos: int, temperature: float = 0.0, generator=None) -> list[int]:
    """Plain decoding: one target step per token; `start` is the first answer token's position."""
    tokens = [pick(first_logits, temperature, generator)[0]]
    while tokens[-1] != eos and len(tokens) < max_new:
        logits = target.decode(_tensor(tokens[-1:], first_logits.device), cache, positions=torch.tensor([[start + len(tokens) - 1]], device=first_logits.device))
        tokens.append(pick(logits.logits[0, -1], temperature, generator)[0])
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.no_grad()
def speculative(
    target: Backend, draft: Backend, target_cache: KVCache, draft_cache: KVCache, first_logits: torch.Tensor, start: int,
    rule: VerificationRule, gamma: int, max_new: int, eos: int, generator=None,
) -> tuple[list[int], DecodeStats]:
    """Draft `gamma` tokens, verify them in one target pass, keep what `rule` accepts plus the
    target's next token, roll both caches back to the kept prefix; repeat until <eos> or `max_new`."""
    if gamma < 1:
        raise DecodingError(f"gamma must be >= 1, got {gamma}")
    device, temp, stats = first_logits.device, rule.draft_temperature, DecodeStats()
    tokens = [pick(first_logits, temp, generator)[0]]  # every token here is confirmed by the target
    pending = tokens[:]  # confirmed tokens the draft has not read yet
    while eos not in tokens and len(tokens) < max_new:
        pos = start + len(tokens) - 1  # position of tokens[-1], the one token the target has not read
        target_len, draft_len = target_cache.length, draft_cache.length
        t0 = time.perf_counter()
        drafted, probs, feed = [], [], pending
        for i in range(gamma):
            positions = torch.arange(pos - len(feed) + 1 + i, pos + 1 + i, device=device)[None]
            logits = draft.decode(_tensor(feed, device), draft_cache, positions=positions).logits[0, -1]
            token, p = pick(logits, temp, generator)
            drafted.append(token)
            probs.append(p)
            feed = [token]
        t1 = time.perf_counter()
        chain = _tensor([tokens[-1]] + drafted, device)
        target_logits = target.decode(chain, target_cache, positions=torch.arange(pos, pos + gamma + 1, device=device)[None]).logits[0]
        n, nxt = rule.accept(chain[0, 1:], torch.stack(probs), target_logits)
        t2 = time.perf_counter()
        rollback(target_cache, target_len + 1 + n, pos + 1 + n)
        if n < gamma:
            rollback(draft_cache, draft_len + len(pending) + n, pos + 1 + n)
            pending = [nxt]
            stats.rejected.append((drafted[n], nxt))
        else:  # the draft never read its last token
            pending = [drafted[-1], nxt]
        tokens += drafted[:n] + [nxt]
        stats.emitted.append(n + 1)
        stats.draft_calls += gamma
        stats.draft_s += t1 - t0
        stats.verify_s += t2 - t1
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    return tokens[:max_new], stats
