"""Word classes for a real English tokenizer, so modality-aware verification can run on it.

A token is *function* when its text, stripped and lower-cased, is one of the closed-class words
below (articles, auxiliaries, pronouns, conjunctions, non-spatial prepositions) or holds no letter
or digit (punctuation, whitespace); *special* when the tokenizer lists it as special; *content*
otherwise. Spatial words (left, above, behind, ...), numbers and sub-word pieces are content, so a
relaxed rule stays strict on them, as the SynthVis word classes do for positions and counts.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no another such
is are was were be been being am has have had having do does did will would shall should can could
may might must
i you he she it we they me him her us them my your his its our their mine yours hers ours theirs
who whom whose which what where when why how there here
and or but nor so yet if then than as because while although though also just very too quite
of in on at to for from by with about into onto through during over
not only both either neither all most more much many few other
""".split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def token_class(text: str) -> str:
    """'function' or 'content' for one token's text (see the module docstring)."""
    word = text.strip().lower()
    if not any(ch.isalnum() for ch in word) or word in FUNCTION_WORDS:
        return "function"
    return "content"


def word_class_masks(tokenizer, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(content_mask, special_mask), each (rows,) bool, for a Hugging Face tokenizer; the two
    masks `ModalityAwareRelaxation` takes. `rows` is the model's output size (default: the
    tokenizer's); rows beyond the tokenizer, which no text maps to, count as special."""
    vocab = len(tokenizer)
    rows = vocab if rows is None else rows
    special = torch.ones(max(rows, vocab), dtype=torch.bool)
    special[:vocab] = False
    special[[i for i in tokenizer.all_special_ids if i < vocab]] = True
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    content = torch.zeros_like(special)
    content[:vocab] = torch.tensor([token_class(t) == "content" for t in texts])
    return (content & ~special)[:rows], special[:rows]


def content_words(text: str) -> list[str]:
    """Lower-cased words of `text` that are not function words."""
    return [w for w in _WORD.findall(text.lower()) if w not in FUNCTION_WORDS]


def content_f1(predicted: str, references: list[str] | tuple[str, ...]) -> float:
    """Best F1, over the references, between the multisets of content words."""
    p = Counter(content_words(predicted))
    best = 0.0
    for ref in references:
        r = Counter(content_words(ref))
        common = sum((p & r).values())
        if common:
            prec, rec = common / sum(p.values()), common / sum(r.values())
            best = max(best, 2 * prec * rec / (prec + rec))
    return best
