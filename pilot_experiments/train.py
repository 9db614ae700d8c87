"""Reproducible training of the reference LVLM on SynthVis, evaluation, and the checkpoint cache.

One step draws a batch of episodes of one family (single image, two images or video), chosen by a
seeded schedule, and packs every question of an episode into one sequence after its pictures:

    <bos> (<img> visual)* q1 <ans> a1 <eos> q2 <ans> a2 <eos> ...

Each question attends to the pictures and to itself only, from the position right after the
pictures (`isolate_questions`), so training sees exactly what evaluation asks. The loss is
next-token cross-entropy on answer tokens and their <eos> (captions weigh half, and every kind of
question an equal share of the other half, `caption_half_mean`), plus an alignment loss that makes
each visual token name its object's attributes in the LM's word embeddings (`PatchProbe`; the words
of the token's place the model adds itself, `model_config`), plus a three-hop grounding loss
(`grounding_loss`): one attention head looks from each word that names an object, and from each
caption word, at that object; two heads of the next layer look from each answer's <ans> at the
question's first and last naming word; two heads of the layer above that look from <ans> at the
objects of those two words, and the answer reads them there. Data, initialisation and batch order
depend on the seed alone, so a run is repeatable on the same machine.

Studies call `load_or_train(size, preset)`: it returns the cached model when the checkpoint for
this (model config, training config, CODE_VERSION) exists, and trains it otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pilot_experiments import synthvis
from pilot_experiments.harness import RESULTS_DIR, progress
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.model import CONFIGS as CONFIGS_SIZES
from pilot_experiments.model import LVLM, LVLMConfig, config_for

CODE_VERSION = "12"  # bump when a change to the model, world or training makes old checkpoints stale
CACHE_ENV = "EFFICIENT_LVLM_CACHE"


class TrainingError(RuntimeError):
    """Training could not produce a usable model (bad preset, or the quality bar was missed)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model, besides the model config."""

    preset: str
    steps: int
    batch: int
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    seed: int = 0
    image_px: int = 64
    frame_px: int = 32
    n_frames: int = 6
    max_objects: int = 4
    family_weights: tuple[float, float, float] = (0.6, 0.15, 0.25)  # image, multi, video
    pools: tuple[int, ...] = (1,)
    probe_weight: float = 1.0
    grounding_weight: float = 1.0
    grounding_layer: int = 1  # the first hop; the second is the layer above
    bf16: bool = True  # bf16 autocast for the training steps (weights stay fp32), on CPU as on CUDA;
    # smoke stays fp32: the tests run it on whatever CPU CI has, with or without native bf16
    eval_every: int = 50
    eval_episodes: int = 60
    bar: dict = field(default_factory=dict)  # metric -> minimum value on the test split

    def to_dict(self) -> dict:
        return asdict(self)


# bf16 autocast, measured side by side (one target step, image batch of 8, 2 threads, median of 5):
# 0.82 s in fp32, 0.49 s in bf16, the same losses to two decimals over 7 steps.
# cpu preset pictures and steps, the target on 2 threads of this project's dev machine: 64 px (256
# patches) took 1400 steps to caption F1 0.814 / VQA 0.917 and 2100 to 0.935 / 0.945 in 1140 s; 48 px
# (144 patches, against tens of text tokens) reached 0.933 / 0.930 in 1600 steps and 678 s, measured
# in the same session, which brings the preset to the "about 10 minutes".
# The default lr, which the cpu and gpu presets use: side by side at 1400 steps on the cpu preset,
# 1e-3 beat 2e-3 and 5e-4 for both sizes (target caption F1 0.55 against 0.25 and 0.51; draft 0.67
# against 0.51 and 0.50).
PRESETS = {
    "smoke": TrainConfig("smoke", steps=150, batch=8, lr=3e-3, warmup=10, image_px=32, frame_px=32, n_frames=3, max_objects=1,
                         family_weights=(1.0, 0.0, 0.0), bf16=False, eval_every=25, eval_episodes=24, bar={"val_token_acc": 0.6}),
    "cpu": TrainConfig("cpu", steps=1600, batch=8, image_px=48, eval_every=100, eval_episodes=60, bar={"vqa": 0.9, "caption_f1": 0.9}),
    "gpu": TrainConfig("gpu", steps=4000, batch=32, warmup=200, image_px=96, frame_px=48, n_frames=12, max_objects=6,
                       eval_every=250, eval_episodes=200, bar={"vqa": 0.95, "caption_f1": 0.95}),
}
FAMILIES = ("image", "multi", "video")


def train_config(preset: str, **overrides) -> TrainConfig:
    """The preset's training config with `overrides` applied."""
    if preset not in PRESETS:
        raise TrainingError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


def model_config(size: str) -> LVLMConfig:
    """`size`'s config over the SynthVis vocabulary, its visual tokens carrying the words that
    name their row and column band (`LVLM.place_embedding`)."""
    tok = synthvis.Tokenizer()
    return replace(config_for(size, len(tok)), place_words=(tuple(tok.encode(list(synthvis.ROWS))), tuple(tok.encode(list(synthvis.COLS)))))


# ----------------------------------------------------------------------------- data


def family_episode(family: str, split: str, seed: int, index: int, tc: TrainConfig) -> synthvis.Episode:
    if family == "image":
        return synthvis.image_episode(split, seed, index, image_px=tc.image_px, max_objects=tc.max_objects)
    if family == "multi":
        return synthvis.multi_image_episode(split, seed, index, image_px=tc.image_px, max_objects=tc.max_objects)
    return synthvis.video_episode(split, seed, index, n_frames=tc.n_frames, frame_px=tc.frame_px, max_objects=min(3, tc.max_objects))


@dataclass
class Batch:
    """A packed batch: pixels (B, U, 3, H, W), times (B, U), text ids (B, Tt), loss mask (B, Tt),
    and for every text token its question's number (`segment`, from 1; 0 on padding), its
    position within that question (`offset`) and its question's kind (`kind`, 1 + its index in
    `synthvis.QA_KINDS`; 0 on padding)."""

    pixels: torch.Tensor
    times: torch.Tensor
    text: torch.Tensor
    loss_mask: torch.Tensor
    segment: torch.Tensor
    offset: torch.Tensor
    kind: torch.Tensor


def pack(episodes: list[synthvis.Episode], tok: synthvis.Tokenizer) -> Batch:
    """Every question of an episode packed after its pictures, `question <ans> answer <eos>` each."""
    rows = []
    for ep in episodes:
        ids, mask, segment, offset, kind = [], [], [], [], []
        for number, qa in enumerate(ep.qas, start=1):
            q = tok.encode(qa.question) + [tok.ans_id]
            a = tok.encode(qa.answer) + [tok.eos_id]
            ids += q + a
            mask += [False] * len(q) + [True] * len(a)
            segment += [number] * (len(q) + len(a))
            offset += list(range(len(q) + len(a)))
            kind += [1 + synthvis.QA_KINDS.index(qa.kind)] * (len(q) + len(a))
        rows.append((ids, mask, segment, offset, kind))
    width = max(len(r[0]) for r in rows)
    text = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
    loss_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    segment, offset, kind = (torch.zeros(len(rows), width, dtype=torch.long) for _ in range(3))
    for i, (ids, mask, seg, off, knd) in enumerate(rows):
        text[i, : len(ids)], loss_mask[i, : len(ids)] = torch.tensor(ids), torch.tensor(mask)
        segment[i, : len(ids)], offset[i, : len(ids)], kind[i, : len(ids)] = torch.tensor(seg), torch.tensor(off), torch.tensor(knd)
    pixels = torch.stack([ep.pixels for ep in episodes])
    times = torch.tensor([ep.times for ep in episodes], dtype=torch.long)
    return Batch(pixels, times, text, loss_mask, segment, offset, kind)


def isolate_questions(inputs, batch: Batch) -> torch.Tensor:
    """Make a packed sequence train exactly what evaluation asks: every question sees the pictures
    and itself, never the other questions or their answers, and starts at the position right
    after the pictures. Rewrites `inputs.positions` and returns the additive attention bias
    (B, 1, T, T), the same for every head, for `LVLM.forward`."""
    b, t = inputs.positions.shape
    prefix = t - batch.text.shape[1]
    device = inputs.embeds.device
    segment = torch.cat([torch.zeros(b, prefix, dtype=torch.long), batch.segment.masked_fill(batch.segment == 0, -1)], dim=1).to(device)
    inputs.positions = torch.cat([torch.arange(prefix).expand(b, -1), prefix + batch.offset], dim=1).to(device)
    allowed = (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])
    bias = torch.zeros(b, t, t, device=device).masked_fill_(~allowed, float("-inf"))
    return bias[:, None]


ATTRIBUTES = (("colour", tuple(synthvis.COLOURS)), ("shape", synthvis.SHAPES), ("size", tuple(synthvis.SIZES)), ("texture", synthvis.TEXTURES))


def patch_labels(episodes: list[synthvis.Episode]) -> torch.Tensor:
    """(B * units * patches, 4) long: for the object on each patch, the index of its colour, shape,
    size and texture word (0 = background), in the order of the visual tokens."""
    labels = []
    for ep in episodes:
        for scene in ep.scenes:
            grid = np.zeros((scene.grid * scene.grid, len(ATTRIBUTES)), dtype=np.int64)
            for obj in scene.objects:
                grid[scene.object_patches(obj.ident)] = [values.index(getattr(obj, attr)) + 1 for attr, values in ATTRIBUTES]
            labels.append(grid)
    return torch.from_numpy(np.concatenate(labels))


class PatchProbe(torch.nn.Module):
    """Training-only alignment loss, in the spirit of LLaVA's projector pre-training: every visual
    token must name the colour, shape, size and texture of the object on its patch, scored against
    the LM's own (tied) embeddings of those words, with one learned "background" vector per
    attribute, so visual tokens live where the question's words do. (Measured on a draft after 300
    steps: colour, shape, size and texture readable from 90, 74, 91 and 92 % of object patches, where
    the earlier linear probe had not left "background".) Dropped after training; not part of the model."""

    SCALE = 10.0

    def __init__(self, dim: int, tok: synthvis.Tokenizer) -> None:
        super().__init__()
        self.background = torch.nn.Parameter(torch.randn(len(ATTRIBUTES), dim) * 0.02)
        for i, (_, values) in enumerate(ATTRIBUTES):
            self.register_buffer(f"words_{i}", torch.tensor(tok.encode(list(values))), persistent=False)

    def loss(self, visual: torch.Tensor, labels: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of cosine similarities (scaled by `SCALE`, as in CLIP) between each visual
        token and the candidate words of every attribute; object and background patches weigh the
        same. Needs at least one object patch and one background patch in the batch."""
        visual = F.normalize(visual.float(), dim=-1)
        on_object = labels[:, 0] > 0
        total = visual.new_zeros(())
        for i in range(len(ATTRIBUTES)):
            candidates = F.normalize(torch.cat([self.background[i : i + 1], embed[getattr(self, f"words_{i}")]]).float(), dim=-1)
            losses = F.cross_entropy(self.SCALE * visual @ candidates.T, labels[:, i], reduction="none")
            # objects cover a tenth of the patches: weigh them as much as the background
            total = total + losses[on_object].mean() + losses[~on_object].mean()
        return total / 2


def grounding_targets(episode: synthvis.Episode, qa: synthvis.QA) -> list[tuple[int, tuple[tuple[int, int], ...]]]:
    """What the words of `qa` are about in the pictures: (offset, ((unit, object ident), ...))
    pairs, offsets counted from the <ans> token. A caption's phrase k describes the k-th object of
    `Scene.caption_order`, so the positions that predict its content words (offset i predicts
    answer word i) point at that object; the two that decide whether phrase k follows at all (the one predicting
    the separator before it and the one predicting its article, or <eos> after the last phrase)
    point at it too, or at no object when there is none left. In a question, each word that names a
    colour or shape of an object the question refers to (negative offsets) points at those objects,
    a video's object at the frame of its event: the model finds an object by its description where
    the description is, and the answer reads it from there. The shape of a count of zero points at
    no object (an empty tuple), as does the end of a caption: `grounding_mask` sends them to <bos>,
    so "nothing" is a place the answer can read too."""
    if qa.kind == "caption":
        unit = qa.objects[0][0] if qa.objects else 0
        objects = episode.scenes[unit].caption_order()
        described = [(synthvis.CAPTION_PHRASE * k + slot, ((unit, o.ident),)) for k, o in enumerate(objects) for slot in synthvis.CAPTION_CONTENT_SLOTS]
        following = [((unit, o.ident),) for o in objects] + [()]  # offset 10k - 1 predicts the separator before phrase k, 10k its article
        return described + [(synthvis.CAPTION_PHRASE * k + slot, refs) for k, refs in enumerate(following) for slot in (-1, 0) if synthvis.CAPTION_PHRASE * k + slot >= 0]
    if qa.kind == "count" and not qa.objects:
        return [(i - len(qa.question), ()) for i, word in enumerate(qa.question) if word in synthvis.PLURALS.values()]
    refs = qa.objects
    if refs and refs[0][0] == -1:  # video
        refs = tuple((episode.times.index(frame), ident) for (_, ident), frame in zip(refs, qa.event_frames))
    referred = [(unit, next(o for o in episode.scenes[unit].objects if o.ident == ident)) for unit, ident in refs]
    targets = []
    for i, word in enumerate(qa.question):
        named = tuple((unit, o.ident) for unit, o in referred if word in (o.colour, o.shape, synthvis.PLURALS[o.shape]))
        if named:
            targets.append((i - len(qa.question), named))
    return targets


def packed_questions(episodes: list[synthvis.Episode], text_start: int):
    """(row, episode, qa, position of its <ans> token) for every question `pack` put in the batch."""
    for b, ep in enumerate(episodes):
        ans = text_start - 1
        for qa in ep.qas:
            ans += len(qa.question) + 1
            yield b, ep, qa, ans
            ans += len(qa.answer) + 1


GROUNDING_GROUPS = ("caption", "shape", "colour")  # how a grounded row finds its object


def grounding_mask(episodes: list[synthvis.Episode], text_start: int, unit_len: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, T) bool: for the packed sequences of `pack`, row i marks the visual tokens that
    position i is about (`grounding_targets`), or <bos> where it is about no object; rows of other
    positions are empty. And (B, T) long: each grounded row's group, 1 + its index in
    `GROUNDING_GROUPS` (by caption order, by a shape word, by a colour word), 0 elsewhere."""
    mask = torch.zeros(len(episodes), length, length, dtype=torch.bool)
    groups = torch.zeros(len(episodes), length, dtype=torch.long)
    for b, ep, qa, ans in packed_questions(episodes, text_start):
        for offset, refs in grounding_targets(ep, qa):
            group = "caption" if qa.kind == "caption" else "colour" if qa.question[offset] in synthvis.COLOURS else "shape"
            groups[b, ans + offset] = 1 + GROUNDING_GROUPS.index(group)
            if not refs:
                mask[b, ans + offset, 0] = True
            for unit, ident in refs:
                mask[b, ans + offset, 2 + unit * unit_len + ep.scenes[unit].object_patches(ident)] = True
    return mask, groups


def routing_masks(episodes: list[synthvis.Episode], text_start: int, length: int) -> torch.Tensor:
    """(2, B, T, T) bool: the second hop. Row i, the <ans> token of a question (captions excepted),
    marks in mask k the question's first (k = 0) or last (k = 1) word that names its objects, where
    the first hop found them. Two heads keep the two words apart, so the third hop knows which
    object is which: in "is the circle left or right of the square ?" head 0 brings "circle" and
    head 1 "square". (Measured on trained targets: with one head over both words, the third hop
    put 0.38 of its mass on a relation's objects; with two, 0.95.)"""
    masks = torch.zeros(2, len(episodes), length, length, dtype=torch.bool)
    for b, ep, qa, ans in packed_questions(episodes, text_start):
        targets = grounding_targets(ep, qa) if qa.kind != "caption" else []
        if targets:
            masks[0, b, ans, ans + targets[0][0]] = True
            masks[1, b, ans, ans + targets[-1][0]] = True
    return masks


def caption_half_mean(values: torch.Tensor, groups: torch.Tensor, caption: int) -> torch.Tensor:
    """Mean of `values` (1-D) in which the entries of group `caption` weigh ½ and every other group
    an equal share of the other ½ (when only one side is present, it weighs everything). Used for
    both losses that mix captions and questions, so that the rare kinds of question count as much
    as the common ones and the long captions as much as all the questions."""
    parts = []
    if bool((groups == caption).any()):
        parts.append(values[groups == caption].mean())
    others = [values[groups == g].mean() for g in groups[groups != caption].unique()]
    if others:
        parts.append(torch.stack(others).mean())
    return torch.stack(parts).mean()


def answer_masks(first: torch.Tensor, groups: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The third hop, where the answer looks at the picture itself, derived from the first two:
    `first`, `groups` from `grounding_mask` and `second` from `routing_masks`. (2, B, T, T) bool,
    in which row i, the <ans> token of a question, marks in mask k what the first hop marks for the
    word that mask k of the second hop routes it to: the objects of the first (k = 0) or last
    (k = 1) naming word (<bos> for a count of zero), so a one-object question reads its object
    through two heads, and a relation or a "which came first" reads each of its two objects
    through a head of its own. And (B, T) long: each <ans> row's group, its first naming word's.
    The second hop brings the naming words to <ans>, so <ans> can find the objects as the words
    did and read them straight from their visual tokens rather than through the words. (Measured
    on a target trained without it: the first hop put 0.96 of its mass on the object and the
    second 1.00 on the naming word, yet only 0.62 of the shape answers were right; with it, every
    shape answer whose two hops found the object was right.)"""
    third = torch.zeros_like(second)
    head, b, row, word = second.nonzero(as_tuple=True)
    third[head, b, row] = first[b, word]
    third_groups = torch.zeros_like(groups)
    first_word = head == 0
    third_groups[b[first_word], row[first_word]] = groups[b[first_word], word[first_word]]
    return third, third_groups


def grounded_rows(mask: torch.Tensor) -> torch.Tensor:
    """(B, R) long: the positions whose rows `mask` (B, T, T) marks, in order, each sequence padded
    with unmarked positions to the longest count R. The grounding losses need the hop heads'
    attention at these rows only (`LVLM.forward`'s `attn_rows`): on an image batch of the cpu
    preset, about a fifth of the T x T weights."""
    marked = mask.any(-1)
    return marked.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, : int(marked.sum(1).max())]


def take_rows(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(..., B, R, T): the rows `rows` (B, R) of `mask` (..., B, T, T)."""
    index = rows[..., None].expand(*mask.shape[:-2], -1, mask.shape[-1])
    return mask.gather(-2, index)


def grounding_loss(attn: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Mean -log of the attention mass (attn (B, R, T), one head, at the rows of `mask` (B, R, T))
    that each grounded row of `mask` puts on the positions it marks: an object's visual tokens (first hop) or the question's naming
    words (second hop). Supervised attention, as in Qiao et al. 2018
    ("Exploring Human-like Attention Supervision in Visual Question Answering"), with the world's
    own object masks as the supervision. With `groups` ((B, T), `grounding_mask`'s), captions and
    questions weigh the same, and among the questions the few rows that find an object by its
    colour weigh as much as the many that find it by shape (`caption_half_mean`). (Measured on
    trained targets, cpu preset: with one mean over all rows, the first hop put 0.30 of its mass on
    the object a colour word names, against 0.99 for a shape word; with these weights, 0.97.
    Caption F1 was 0.87 with one mean, 0.81 with these weights and 0.75 with the three groups
    weighing the same.)"""
    rows = mask.any(-1)
    loss = -torch.log((attn * mask).sum(-1).clamp_min(1e-6))
    if groups is None:
        return loss[rows].mean()
    return caption_half_mean(loss[rows], groups[rows], 1 + GROUNDING_GROUPS.index("caption"))


def batch_loss(
    model: LVLM, episodes: list[synthvis.Episode], tok: synthvis.Tokenizer, pool: int = 1, probe: PatchProbe | None = None, *,
    probe_weight: float = 1.0, grounding_weight: float = 0.0, grounding_layer: int = 1,
) -> tuple[torch.Tensor, float]:
    """Answer-token cross-entropy, captions ½ and each kind of question an equal share of the
    other ½ (`caption_half_mean`) (plus, at pool 1, the probe's patch loss when a probe is given
    and, when `grounding_weight` > 0, three grounding losses: head 0 of LM layer `grounding_layer`
    looks from the naming words at their objects (`grounding_mask`), heads 0 and 1 of the layer
    above look from each <ans> at the first and the last naming word (`routing_masks`), and heads
    0 and 1 of the layer above that look from each <ans> at those words' objects (`answer_masks`))
    and answer-token accuracy (teacher forced)."""
    device = next(model.parameters()).device
    batch = pack(episodes, tok)
    inputs = model.embed_prompt(batch.pixels.to(device), batch.times.to(device), batch.text.to(device), pool)
    bias = isolate_questions(inputs, batch)
    text = batch.text.to(device)
    offset = inputs.length - text.shape[1]  # text starts here; token i is predicted at i - 1
    grounded = grounding_weight > 0 and pool == 1
    hops, rows = False, None
    if grounded:
        unit_len = (offset - 1) // batch.pixels.shape[1]
        first, groups = grounding_mask(episodes, offset, unit_len, inputs.length)
        second = routing_masks(episodes, offset, inputs.length)
        third, third_groups = answer_masks(first, groups, second)
        rows = grounded_rows(first | second.any(0))
        first, second, third = (take_rows(m, rows).to(device) for m in (first, second, third))
        groups, third_groups = (g.gather(1, rows).to(device) for g in (groups, third_groups))
        rows = rows.to(device)
        hops = {grounding_layer: [0], grounding_layer + 1: [0, 1], grounding_layer + 2: [0, 1]}
    # the bias in the dtype attention runs in (bf16 under autocast), converted once rather than per layer
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else inputs.embeds.dtype
    out = model(inputs, attn_bias=bias.to(dtype), need_attn=hops, attn_rows=rows)
    logits = out.logits
    pred = logits[:, offset - 1 : -1]
    mask = batch.loss_mask.to(device)
    kind = batch.kind.to(device)[mask]
    loss = caption_half_mean(F.cross_entropy(pred[mask].float(), text[mask], reduction="none"), kind, 1 + synthvis.QA_KINDS.index("caption"))
    acc = (pred[mask].argmax(-1) == text[mask]).float().mean().item()
    if probe is not None and pool == 1:
        # the probe scores what each patch shows, not the place words it carries
        place = model.place_embedding((batch.pixels.shape[-2] // model.cfg.patch_px, batch.pixels.shape[-1] // model.cfg.patch_px))
        visual = (inputs.embeds[inputs.modality == VISUAL].unflatten(0, (-1, place.shape[0])) - place).flatten(0, 1)
        loss = loss + probe_weight * probe.loss(visual, patch_labels(episodes).to(device), model.embed.weight)
    if grounded:
        hop_losses = [grounding_loss(out.attn[grounding_layer][:, 0], first, groups)] if bool(first.any()) else []
        if bool(second.any()):  # the second and third hops: <ans> rows, which captions lack
            second_attn, third_attn = out.attn[grounding_layer + 1], out.attn[grounding_layer + 2]
            hop_losses.append(torch.stack([grounding_loss(second_attn[:, head], second[head]) for head in (0, 1)]).mean())
            hop_losses.append(torch.stack([grounding_loss(third_attn[:, head], third[head], third_groups) for head in (0, 1)]).mean())
        if hop_losses:
            loss = loss + grounding_weight * torch.stack(hop_losses).sum()
    return loss, acc


# ----------------------------------------------------------------------------- evaluation


def prompt_inputs(model: LVLM, episode: synthvis.Episode, question: tuple[str, ...], tok: synthvis.Tokenizer, pool: int = 1):
    """Embedded `<bos> (<img> visual)* question <ans>` for one episode (batch 1)."""
    device = next(model.parameters()).device
    text = torch.tensor([tok.encode(question) + [tok.ans_id]], device=device)
    times = torch.tensor([episode.times], device=device)
    return model.embed_prompt(episode.pixels[None].to(device), times, text, pool)


def caption_f1(predicted: list[str] | tuple[str, ...], truth: tuple[str, ...]) -> float:
    """F1 between the (shape, attribute, value) fact multisets of two captions."""
    p, t = synthvis.caption_facts(predicted), synthvis.caption_facts(truth)
    common = sum(min(p.count(f), t.count(f)) for f in set(p))
    if not p or not t:
        return float(p == t)
    prec, rec = common / len(p), common / len(t)
    return 0.0 if common == 0 else 2 * prec * rec / (prec + rec)


@torch.no_grad()
def evaluate(model: LVLM, tc: TrainConfig, n: int | None = None, split: str = "test", families=FAMILIES) -> dict[str, float]:
    """Greedy-decoded exact match per question kind, overall VQA (image kinds), temporal and
    multi-image exact match, and caption F1, on `n` episodes per family of a split."""
    model.eval()
    tok = synthvis.Tokenizer()
    n = tc.eval_episodes if n is None else n
    hits: dict[str, list[float]] = {}
    weights = dict(zip(FAMILIES, tc.family_weights))
    for family in families:
        if weights[family] == 0:
            continue
        for i in range(n):
            ep = family_episode(family, split, tc.seed, i, tc)
            device = next(model.parameters()).device
            prefix = model.embed_prompt(ep.pixels[None].to(device), torch.tensor([ep.times], device=device), torch.zeros(1, 0, dtype=torch.long, device=device))
            shared = model.new_cache(1, capacity=prefix.length + 64)
            model.prefill(prefix, shared)
            for qa in ep.qas:  # every question continues one shared visual prefill
                cache = shared.clone()
                question = torch.tensor([tok.encode(qa.question) + [tok.ans_id]], device=device)
                logits = model.decode(question, cache).logits[:, -1]
                out = tok.decode(model.greedy_continue(logits, cache, len(qa.answer) + 8)).split()
                score = caption_f1(out, qa.answer) if qa.kind == "caption" else float(tuple(out) == qa.answer)
                hits.setdefault(qa.kind, []).append(score)
    metrics = {f"vqa_{k}": float(np.mean(v)) for k, v in hits.items() if k != "caption"}
    if "caption" in hits:
        metrics["caption_f1"] = float(np.mean(hits.pop("caption")))
    groups = {"vqa": ("colour", "shape", "size", "texture", "count", "relation"), "temporal": ("appear-colour", "vanish-colour", "first"), "multi": ("multi-colour", "multi-count")}
    for name, kinds in groups.items():
        scores = [s for k in kinds for s in hits.get(k, [])]
        if scores:
            metrics[name] = float(np.mean(scores))
    return metrics


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: LVLM
    model_config: LVLMConfig
    train_config: TrainConfig
    metrics: dict[str, float]
    curve: dict[str, list[float]]
    wall_s: float
    params: dict[str, int]


TRAIN_THREADS = 2  # CPU training always runs on this many threads: float reductions, hence the weights, depend on it


def train(size: str, tc: TrainConfig, device: str = "cpu", *, show_progress: bool = True) -> TrainResult:
    """Train `size` from scratch with `tc`; deterministic for a given seed and machine.

    On a CPU the training runs on TRAIN_THREADS threads whatever the caller set (a study that runs on one thread
    and finds no cached checkpoint trains the same weights as `python -m pilot_experiments train`), and the
    caller's thread count is restored afterwards."""
    if torch.device(device).type != "cpu":
        return _train(size, tc, device, show_progress=show_progress)
    caller = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return _train(size, tc, device, show_progress=show_progress)
    finally:
        torch.set_num_threads(caller)


def _train(size: str, tc: TrainConfig, device: str, *, show_progress: bool) -> TrainResult:
    tok = synthvis.Tokenizer()
    cfg = model_config(size)
    torch.manual_seed(tc.seed)
    model = LVLM(cfg).to(device)
    probe = PatchProbe(cfg.lm_dim, tok).to(device)
    params = [*model.parameters(), *probe.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.98))
    schedule = np.random.default_rng([tc.seed, 99])
    families = schedule.choice(len(FAMILIES), size=tc.steps, p=np.array(tc.family_weights) / sum(tc.family_weights))
    pools = schedule.choice(tc.pools, size=tc.steps)
    val = [family_episode("image", "val", tc.seed, i, tc) for i in range(16)]
    curve: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "val_token_acc": []}
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"train {size}/{tc.preset}", total=tc.steps, visible=show_progress)
        for step in range(tc.steps):
            lr = tc.lr * min(1.0, (step + 1) / tc.warmup) * 0.5 * (1 + np.cos(np.pi * step / tc.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            family = FAMILIES[families[step]]
            episodes = [family_episode(family, "train", tc.seed, step * tc.batch + j, tc) for j in range(tc.batch)]
            model.train()
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=tc.bf16):
                loss, _ = batch_loss(
                    model, episodes, tok, int(pools[step]) if family != "video" else 1, probe, probe_weight=tc.probe_weight,
                    grounding_weight=tc.grounding_weight, grounding_layer=tc.grounding_layer,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            curve["step"].append(step)
            curve["loss"].append(loss.item())
            if (step + 1) % tc.eval_every == 0 or step + 1 == tc.steps:
                model.eval()
                with torch.no_grad():
                    _, acc = batch_loss(model, val, tok)
                curve["val_step"].append(step + 1)
                curve["val_token_acc"].append(acc)
                if show_progress:
                    line = f"step {step + 1}: loss {np.mean(curve['loss'][-tc.eval_every:]):.4f}, val answer-token accuracy {acc:.3f}, {time.perf_counter() - start:.0f} s"
                    bar.console.log(line) if bar.console.is_terminal else print(line, flush=True)
            bar.update(task, advance=1, description=f"train {size}/{tc.preset} loss {loss.item():.3f}")
    train_s = time.perf_counter() - start
    metrics = evaluate(model, tc)
    metrics["val_token_acc"] = curve["val_token_acc"][-1]
    metrics["train_s"] = train_s
    return TrainResult(model, cfg, tc, metrics, curve, time.perf_counter() - start, model.param_counts())


# ----------------------------------------------------------------------------- checkpoint cache


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "efficient-lvlm"))


def checkpoint_key(size: str, tc: TrainConfig) -> str:
    cfg = model_config(size)
    blob = json.dumps({"model": cfg.to_dict(), "train": tc.to_dict(), "code": CODE_VERSION}, sort_keys=True)
    return f"{size}-{tc.preset}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def checkpoint_path(size: str, tc: TrainConfig) -> Path:
    return cache_dir() / f"{checkpoint_key(size, tc)}.pt"


def save(result: TrainResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"state": result.model.state_dict(), "model_config": result.model_config.to_dict(), "train_config": result.train_config.to_dict(),
         "metrics": result.metrics, "curve": result.curve, "wall_s": result.wall_s, "params": result.params},
        tmp,
    )
    tmp.replace(path)


def load_checkpoint(path: Path, device: str = "cpu") -> TrainResult:
    blob = torch.load(path, map_location=device, weights_only=True)
    cfg = LVLMConfig(**blob["model_config"])
    model = LVLM(cfg).to(device)
    model.load_state_dict(blob["state"])
    model.eval()
    tc_dict = blob["train_config"]
    tc = TrainConfig(**{**tc_dict, "family_weights": tuple(tc_dict["family_weights"]), "pools": tuple(tc_dict["pools"])})
    return TrainResult(model, cfg, tc, blob["metrics"], blob["curve"], blob["wall_s"], blob["params"])


def load_or_train(size: str = "target", preset: str = "cpu", device: str = "cpu", *, show_progress: bool = True) -> TrainResult:
    """The trained model for (size, preset) from the cache, training (and caching) it if absent.
    The returned model is in eval mode on `device`; `.metrics` holds its test-split quality."""
    tc = train_config(preset)
    path = checkpoint_path(size, tc)
    if path.exists():
        return load_checkpoint(path, device)
    result = train(size, tc, device, show_progress=show_progress)
    save(result, path)
    return result


def meets_bar(metrics: dict[str, float], tc: TrainConfig) -> dict[str, bool]:
    return {k: metrics.get(k, 0.0) >= v for k, v in tc.bar.items()}


# ----------------------------------------------------------------------------- command line


def _plot_curves(curve: dict[str, list[float]], title: str):
    def draw(fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        steps, loss = np.array(curve["step"]), np.array(curve["loss"])
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(steps, loss, alpha=0.3, label="batch")
        ax1.plot(steps[k - 1 :], smooth, label=f"mean of {k}")
        ax1.set(xlabel="step", ylabel="answer-token cross-entropy", yscale="log", title=f"{title}: training loss")
        ax1.legend()
        ax2.plot(curve["val_step"], curve["val_token_acc"], marker="o")
        ax2.set(xlabel="step", ylabel="val answer-token accuracy", ylim=(0, 1.02), title="teacher-forced val accuracy")

    return draw


def run_cli(args) -> int:
    from pilot_experiments import harness

    harness.check_preset(args.preset)
    device = harness.pick_device(args.preset)
    tc = train_config(args.preset)
    path = checkpoint_path(args.size, tc)
    if args.retrain or not path.exists():
        result = train(args.size, tc, str(device))
        save(result, path)
    else:
        result = load_checkpoint(path, str(device))
    passed = meets_bar(result.metrics, tc)
    metrics = {**result.metrics, "params": result.params, "bar": tc.bar, "bar_met": passed, "checkpoint": str(path)}
    rows = [{"metric": k, "value": v, "bar": tc.bar.get(k, "")} for k, v in result.metrics.items()]
    notes = (
        f"Model `{args.size}` ({result.params['total']:,} parameters) trained with preset `{args.preset}`; "
        f"exact match / F1 on the test split. Command: `python -m pilot_experiments train --size {args.size} --preset {args.preset}`."
    )
    record = harness.StudyRecord(metrics, rows, _plot_curves(result.curve, f"{args.size}/{args.preset}"), notes)
    out = harness.write_results(
        f"train-{args.size}", args.preset, device, tc.seed, {"model": result.model_config, "train": tc}, record, result.wall_s, Path(args.results_dir)
    )
    for k, v in result.metrics.items():
        print(f"{k:>20}: {v:.4f}" + (f"  (bar {tc.bar[k]})" if k in tc.bar else ""))
    print(f"results: {out}")
    return 0 if all(passed.values()) else 1


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train (or load from the cache) a reference LVLM on SynthVis and write its results")
    p.add_argument("--size", choices=list(CONFIGS_SIZES), default="target")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--retrain", action="store_true", help="ignore a cached checkpoint")
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="where to write results (default: the package's results/)")
    p.set_defaults(handler=run_cli)
