"""Verification rules: given a draft chain and the target's logits over it, how many draft tokens
to keep and which token the target emits next (a correction, or a bonus after a full chain).

Every rule's `accept(draft_tokens, draft_probs, target_logits) -> (n_accepted, next_token)` takes

    draft_tokens: (gamma,) long, the drafted chain;
    draft_probs: (gamma, vocab), the distribution each draft token was drawn from;
    target_logits: (gamma + 1, vocab), row i the target's prediction for draft position i (made
                   after reading the chain up to it), row gamma the position after the chain,

and returns 0 <= n_accepted <= gamma, so a verification step emits at most gamma + 1 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class VerificationError(ValueError):
    """A rule built with knobs it cannot use, or called with tensors of the wrong shapes."""


def _check_shapes(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_logits: torch.Tensor) -> None:
    gamma = draft_tokens.shape[0]
    if draft_tokens.dim() != 1 or draft_probs.shape[0] != gamma or target_logits.shape[0] != gamma + 1:
        raise VerificationError(
            f"expected draft_tokens (gamma,), draft_probs (gamma, vocab), target_logits (gamma + 1, vocab); got "
            f"{tuple(draft_tokens.shape)}, {tuple(draft_probs.shape)}, {tuple(target_logits.shape)}"
        )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class VerificationRule:
    """Base of the greedy-target rules: keep the longest prefix of the chain whose tokens all pass
    `passes`, then emit the target's greedy token at the first failure or after the chain."""

    @property
    def draft_temperature(self) -> float:
        """0 means the draft proposes its greedy token; > 0 means it samples at that temperature."""
        return 0.0

    def accept(self, draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
        _check_shapes(draft_tokens, draft_probs, target_logits)
        passed = self.passes(draft_tokens, draft_probs, target_logits[:-1])
        failed = (~passed).nonzero()
        n = int(failed[0, 0]) if len(failed) else draft_tokens.shape[0]
        return n, int(target_logits[n].argmax())

    def passes(self, draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
        """(gamma,) bool: whether each draft token would be kept, judged on its own
        (target_logits here has the gamma rows that verify the chain)."""
        raise NotImplementedError


@dataclass
class StrictMatch(VerificationRule):
    """Keep a draft token only if it is the target's greedy choice, so the output is exactly the
    target's greedy decoding; the exact-match verification of SpecVLM (https://arxiv.org/abs/2508.16201)."""

    def passes(self, draft_tokens, draft_probs, target_logits):
        return draft_tokens == target_logits.argmax(-1)


@dataclass
class RandomRelaxation(VerificationRule):
    """Keep a matching draft token, and a mismatching one anyway with probability `rate`; the
    survey's random-relaxation probe of relaxed verification (https://arxiv.org/abs/2604.05546, App. D.2)."""

    rate: float = 0.5
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise VerificationError(f"rate must lie in [0, 1], got {self.rate}")
        self._gen = _generator(self.seed)

    def passes(self, draft_tokens, draft_probs, target_logits):
        lucky = torch.rand(draft_tokens.shape, generator=self._gen) < self.rate
        return (draft_tokens == target_logits.argmax(-1)) | lucky.to(draft_tokens.device)


@dataclass
class TypicalAcceptance(VerificationRule):
    """Keep a draft token the target finds typical: probability above min(threshold, alpha *
    exp(-entropy)) of the target's tempered distribution; Medusa's rule (https://arxiv.org/abs/2401.10774)."""

    threshold: float = 0.09
    alpha: float = 0.3
    posterior_temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0 or not 0.0 < self.alpha <= 1.0:
            raise VerificationError(f"threshold and alpha must lie in (0, 1], got {self.threshold}, {self.alpha}")
        if self.posterior_temperature <= 0:
            raise VerificationError(f"posterior_temperature must be > 0, got {self.posterior_temperature}")

    def passes(self, draft_tokens, draft_probs, target_logits):
        probs = torch.softmax(target_logits.float() / self.posterior_temperature, dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        p_draft = probs.gather(-1, draft_tokens[:, None])[:, 0]
        floor = torch.minimum(torch.full_like(entropy, self.threshold), self.alpha * torch.exp(-entropy))
        return (draft_tokens == target_logits.argmax(-1)) | (p_draft > floor)


@dataclass
class ModalityAwareRelaxation(VerificationRule):
    """Exact match wherever the draft's or the target's token is a visual-content or special word;
    where both are function words, keep a mismatch with probability `rate` if the draft token is in
    the target's top-k. Optionally (`content_tolerance`) also keep a visual-content mismatch that the
    target finds nearly as likely as its own choice. Our design of the survey's proposal
    (https://arxiv.org/abs/2604.05546, App. D.2)."""

    content_mask: torch.Tensor = field(repr=False)  # (vocab,) bool: visual-content words
    special_mask: torch.Tensor = field(repr=False)  # (vocab,) bool: <eos> and the other special tokens
    rate: float = 1.0
    top_k: int | None = 5
    content_tolerance: float | None = None
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for mask in (self.content_mask, self.special_mask):
            if mask.dim() != 1 or mask.dtype != torch.bool or mask.shape != self.content_mask.shape:
                raise VerificationError("content_mask and special_mask must be (vocab,) bool tensors of one size")
        if not 0.0 <= self.rate <= 1.0:
            raise VerificationError(f"rate must lie in [0, 1], got {self.rate}")
        if self.top_k is not None and self.top_k < 1:
            raise VerificationError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.content_tolerance is not None and not 0.0 < self.content_tolerance <= 1.0:
            raise VerificationError(f"content_tolerance must lie in (0, 1] or be None, got {self.content_tolerance}")
        self._gen = _generator(self.seed)

    @classmethod
    def for_tokenizer(cls, tokenizer, **knobs) -> ModalityAwareRelaxation:
        """Masks from the tokenizer's word classes (colours, shapes, numbers, positions, ... are content)."""
        content, special = tokenizer.class_masks()
        return cls(content_mask=content, special_mask=special, **knobs)

    def passes(self, draft_tokens, draft_probs, target_logits):
        greedy = target_logits.argmax(-1)
        content, special = self.content_mask.to(draft_tokens.device), self.special_mask.to(draft_tokens.device)
        strict = content | special
        relaxable = ~strict[draft_tokens] & ~strict[greedy]
        if self.top_k is not None:
            top = target_logits.topk(min(self.top_k, target_logits.shape[-1]), dim=-1).indices
            relaxable &= (top == draft_tokens[:, None]).any(-1)
        lucky = (torch.rand(draft_tokens.shape, generator=self._gen) < self.rate).to(draft_tokens.device)
        keep = (draft_tokens == greedy) | (relaxable & lucky)
        if self.content_tolerance is not None:
            probs = torch.softmax(target_logits.float(), dim=-1)
            close = probs.gather(-1, draft_tokens[:, None])[:, 0] >= self.content_tolerance * probs.max(-1).values
            keep |= content[draft_tokens] & content[greedy] & close
        return keep


@dataclass
class LosslessSampling(VerificationRule):
    """Keep draft token x with probability min(1, q(x)/p(x)), resample a rejection from the residual
    max(0, q - p), and sample a bonus token after a full chain, so outputs follow the target's own
    distribution; speculative sampling (https://arxiv.org/abs/2211.17192, https://arxiv.org/abs/2302.01318)."""

    temperature: float = 1.0
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise VerificationError(f"lossless sampling needs temperature > 0, got {self.temperature}")
        self._gen = _generator(self.seed)

    @property
    def draft_temperature(self) -> float:
        return self.temperature

    def _sample(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs.float().cpu(), 1, generator=self._gen))

    def accept(self, draft_tokens, draft_probs, target_logits):
        _check_shapes(draft_tokens, draft_probs, target_logits)
        gamma = draft_tokens.shape[0]
        q = torch.softmax(target_logits.float() / self.temperature, dim=-1).cpu()
        p = draft_probs.float().cpu()
        tokens = draft_tokens.cpu()
        rows = torch.arange(gamma)
        ratio = q[rows, tokens] / p[rows, tokens].clamp_min(1e-20)
        rejected = (torch.rand(gamma, generator=self._gen) > ratio).nonzero()
        if len(rejected) == 0:
            return gamma, self._sample(q[gamma])
        n = int(rejected[0, 0])
        residual = (q[n] - p[n]).clamp_min(0.0)
        return n, self._sample(residual if residual.sum() > 0 else q[n])
