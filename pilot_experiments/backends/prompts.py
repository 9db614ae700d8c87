"""SynthVis questions put to a backend, and the backend's answers read back as SynthVis words.

The hybrid-kv, relaxed-spec and streaming studies ask SynthVis questions about SynthVis pictures and score the
answers with SynthVis's own metrics. A `Prompter` is all they need of a model for that:

- `prompt(episode, question)`: the pictures and the question as backend `Inputs`, visual entries
  marked, ending with `answer_start`, the token whose logits give the first answer word (left off
  with `with_answer_start=False`, so that a study can decode it under a compressed cache);
- `words(tokens)`: an answer as SynthVis words, which `train.caption_f1` and exact match score;
- `eos` and `class_masks()`: where an answer ends, and the word classes (content, special, and
  function for the rest) that the relaxed verification rules read.

Two implementations. `ReferencePrompter` speaks the SynthVis tokenizer the reference LVLM was
trained on. `ChatPrompter` asks a `transformers` Qwen2.5-VL in English through its chat template:
every picture is scaled up so that one visual token of the checkpoint (patch x spatial merge, 28 px
for Qwen2.5-VL) covers exactly one SynthVis patch, so a 64 px SynthVis image is 256 visual tokens
for either model and the patch-level ground truth (which object each visual token shows) holds
unchanged; each question carries an instruction to answer in one word, and the caption request
spells out the caption template, so the same fact-level scoring applies.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from pilot_experiments import synthvis
from pilot_experiments.backends.base import Backend, BackendError
from pilot_experiments.backends.english import word_class_masks
from pilot_experiments.backends.reference import ReferenceBackend
from pilot_experiments.model import LVLM, Inputs

CAPTION_QUESTION = ("describe", "the", "image")
ONE_WORD = "Answer with one word."
CAPTION_INSTRUCTION = " ".join([
    "Describe every object in one line, in the form 'a <size> <colour> <texture> <shape> at the <row> <column>',",
    "objects from the top row down, joined by 'and', ending with a full stop.",
    *(f"{name}: {', '.join(words)}." for name, words in (
        ("Sizes", synthvis.SIZES), ("Colours", synthvis.COLOURS), ("Textures", synthvis.TEXTURES),
        ("Shapes", synthvis.SHAPES), ("Rows", synthvis.ROWS), ("Columns", synthvis.COLS))),
])
VIDEO_PREFACE = "The images are the frames of one video, in order."
_WORD = re.compile(r"[a-z]+|\d+|[.,?]")


@runtime_checkable
class Prompter(Protocol):
    """What the studies ask of a model besides the backend calls (see the module docstring)."""

    backend: Backend
    label: str
    params: int
    eos: int
    answer_start: int

    def prompt(self, episode: synthvis.Episode, question: tuple[str, ...], *, with_answer_start: bool = True) -> Inputs: ...

    def words(self, tokens: list[int]) -> list[str]: ...

    def class_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, special) bool masks over the output vocabulary."""
        ...


class ReferencePrompter:
    """The reference LVLM's own layout: `<bos> (<img> visual)* question <ans>`."""

    def __init__(self, model: LVLM) -> None:
        self.model = model
        self.backend = ReferenceBackend(model)
        self.tok = synthvis.Tokenizer()
        self.label = model.cfg.name
        self.params = model.param_counts()["total"]
        self.eos, self.answer_start = self.tok.eos_id, self.tok.ans_id

    def prompt(self, episode: synthvis.Episode, question: tuple[str, ...], *, with_answer_start: bool = True) -> Inputs:
        device = self.backend.device
        text = torch.tensor([self.tok.encode(question) + [self.answer_start] * with_answer_start], device=device)
        return self.model.embed_prompt(episode.pixels[None].to(device), torch.tensor([episode.times], device=device), text)

    def words(self, tokens: list[int]) -> list[str]:
        return self.tok.decode(tokens).split()

    def class_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tok.class_masks()


def question_text(question: tuple[str, ...], *, video: bool) -> str:
    """A SynthVis question as an English request with its answer-format instruction (after a line
    saying the pictures are a video's frames, for a `video`)."""
    sentence = " ".join(question).replace(" ?", "?").replace(" ,", ",")
    sentence = sentence[0].upper() + sentence[1:]
    parts = [VIDEO_PREFACE] if video else []
    parts += [CAPTION_INSTRUCTION if tuple(question) == CAPTION_QUESTION else f"{sentence} {ONE_WORD}"]
    return " ".join(parts)


def answer_words(text: str) -> list[str]:
    """Free text as SynthVis words: lower case, punctuation split off, digits spelled out, and a
    closing full stop dropped (one-word answers end there; caption parsing does not need it)."""
    words = [synthvis.NUMBERS[int(w)] if w.isdigit() and int(w) < len(synthvis.NUMBERS) else w for w in _WORD.findall(text.lower())]
    return words[:-1] if words[-1:] == ["."] else words


def processor_chat_template(path: Path) -> str | None:
    """The chat template a checkpoint keeps beside its processor (`chat_template.jinja`, or
    `chat_template.json` as Qwen2.5-VL's repositories do) rather than in its tokenizer's config."""
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").exists():
        return json.loads((path / "chat_template.json").read_text())["chat_template"]
    return None


class ChatPrompter:
    """A Qwen2.5-VL checkpoint behind `HFBackend`, asked in English through its chat template.

    `image_processor` is the checkpoint's (`Qwen2VLImageProcessor`); this class does what the
    checkpoint's processor would do with it (patches, grid, one image placeholder expanded to the
    image's token count) so that no video processor, and hence no torchvision, is needed."""

    def __init__(self, backend, image_processor, label: str | None = None) -> None:
        tokenizer = backend.tokenizer
        if tokenizer is None:
            raise BackendError("the checkpoint has no tokenizer files; a chat prompter needs one next to the weights")
        if not backend.mrope or backend.image_token_id is None:
            raise BackendError(f"{type(backend.model).__name__} takes no images; SynthVis questions need a Qwen2.5-VL checkpoint")
        self.backend, self.tokenizer, self.image_processor = backend, tokenizer, image_processor
        config = backend.model.config
        self.label = label or getattr(config, "name_or_path", "") or type(backend.model).__name__
        self.params = sum(p.numel() for p in backend.model.parameters())
        self.eos = tokenizer.eos_token_id
        self.image_tokens = tokenizer.convert_ids_to_tokens([config.vision_start_token_id, config.image_token_id, config.vision_end_token_id])
        self.token_px = image_processor.patch_size * image_processor.merge_size
        self.merge = image_processor.merge_size
        self.answer_start = self.tokenize(self._chat(ONE_WORD))[-1]
        self._masks = word_class_masks(tokenizer, rows=backend.lm_head.out_features)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ChatPrompter:
        """The checkpoint directory's model, tokenizer and image processor."""
        from transformers import AutoImageProcessor

        from pilot_experiments.backends.hf import HFBackend

        path = Path(path)
        backend = HFBackend.from_pretrained(path, dtype=dtype, device=device)
        if backend.tokenizer is not None and not backend.tokenizer.chat_template:
            backend.tokenizer.chat_template = processor_chat_template(path)
        return cls(backend, AutoImageProcessor.from_pretrained(str(path)), label=path.name)

    def _chat(self, content: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        return f"{content}\nAnswer:"

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it (image markers) become their ids."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def pictures(self, pixels: torch.Tensor, grid: int) -> dict[str, torch.Tensor]:
        """SynthVis pictures (units, 3, H, W) in [0, 1] with `grid` patches a side, as the image
        processor's `pixel_values` and `image_grid_thw`: each picture is first scaled up (nearest
        neighbour) so that one visual token of the checkpoint covers one SynthVis patch."""
        images = []
        for unit in pixels.cpu():
            scale = self.token_px * grid // unit.shape[-1]
            big = unit.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
            images.append((big.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        out = self.image_processor(images=images, return_tensors="pt")
        device = self.backend.device
        return {"pixel_values": out["pixel_values"].to(device, self.backend.dtype), "image_grid_thw": out["image_grid_thw"].to(device)}

    def split_chat(self) -> tuple[str, str]:
        """The chat template's text before and after a user message (the after part opens the
        assistant's turn)."""
        marker = "\x00MESSAGE\x00"
        before, after = self._chat(marker).split(marker)
        return before, after

    def encode(self, episode: synthvis.Episode, question: tuple[str, ...], *, with_answer_start: bool = True) -> dict[str, torch.Tensor]:
        """What the checkpoint's processor would return: `input_ids` (1, T) with every image
        placeholder expanded, `pixel_values` and `image_grid_thw`; the arguments of `model.generate`."""
        pictures = self.pictures(episode.pixels, episode.scenes[0].grid)
        grid_thw = pictures["image_grid_thw"]
        placeholder = "".join(self.image_tokens)
        ids = self.tokenize(self._chat(placeholder * len(episode.pixels) + question_text(question, video=episode.video is not None)))
        if ids[-1] != self.answer_start:
            raise BackendError("the chat template's generation prompt changed with the message; cannot find the answer start")
        counts = iter((grid_thw.prod(-1) // self.merge**2).tolist())
        image_id = self.backend.image_token_id
        expanded = [t for i in ids for t in ([image_id] * next(counts) if i == image_id else [i])]
        return {"input_ids": torch.tensor([expanded[: len(expanded) - (not with_answer_start)]], device=self.backend.device), **pictures}

    def prompt(self, episode: synthvis.Episode, question: tuple[str, ...], *, with_answer_start: bool = True) -> Inputs:
        return self.backend.embed_prompt(**self.encode(episode, question, with_answer_start=with_answer_start))

    def words(self, tokens: list[int]) -> list[str]:
        return answer_words(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def class_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._masks

