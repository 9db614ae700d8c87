"""The streaming memory on a Qwen2.5-VL checkpoint, and the choice between it and the reference one.

The stream is laid out as the checkpoint reads a multi-image chat: the chat template's opening,
then per frame `<|vision_start|>`, the frame's visual tokens, `<|vision_end|>`; a question is the
English request of `prompts.question_text` and the template's closing, which opens the answer.
Positions follow Qwen2.5-VL's multimodal RoPE: a text token at p has (t, h, w) = (p, p, p); a
frame's visual tokens, after its start marker at p, have (b, b + row, b + col) with b = p + 1, and
its end marker sits at b + grid. The cache records b as every visual entry's position.

Re-positioning keeps each frame whole. After an edit, text slots and frames are laid out again one
after another (a frame spans `grid` positions, however many of its tokens are left), and every
entry moves by one offset d for all three components. That is exactly a 1-D rotation by d in
RoPE's rotate-half layout, so `memory.rotate` serves as for the reference LVLM; keys made
position-free keep their patch's (0, row, col) rotation, which retrieval then compares with
de-rotated question queries.
"""

from __future__ import annotations

import time

import torch

from pilot_experiments.backends.base import BackendError
from pilot_experiments.backends.hf import HFInputs
from pilot_experiments.backends.prompts import ChatPrompter, Prompter, question_text
from pilot_experiments.kvcache import TEXT, VISUAL, KVCache
from pilot_experiments.model import rope
from pilot_experiments.studies.streaming.memory import StreamMemory, StreamMemoryError, rotate


class ChatStreamMemory(StreamMemory):
    """`StreamMemory` on a `ChatPrompter`'s checkpoint (see the module docstring)."""

    markers_per_frame = 2  # <|vision_start|>, <|vision_end|>

    def __init__(self, chat: ChatPrompter, reserve: int = 0) -> None:  # the reference memory's set-up does not apply
        self.chat, self.backend = chat, chat.backend
        rope_parameters = self.backend.text_config.rope_parameters
        if rope_parameters.get("rope_type", "default") != "default":
            raise BackendError(f"RoPE scaling {rope_parameters['rope_type']!r} is not a plain rotation; the streaming memory cannot re-position keys")
        self.theta = rope_parameters["rope_theta"]
        self.patch_px = 4  # SynthVis's patch, which one visual token of the checkpoint covers
        self.reserve = reserve
        self.cache = self.new_cache(max(reserve, 1))
        self.last_frame = -1
        self.grid = 0  # patches a side, set by the first frame
        config = self.backend.model.config
        self.start_id, self.end_id = config.vision_start_token_id, config.vision_end_token_id
        before, self.closing = chat.split_chat()
        ids = torch.tensor([chat.tokenize(before)], device=self.backend.device)
        self.backend.prefill(self.backend.embed_tokens(ids, torch.arange(ids.shape[1], device=ids.device)[None]), self.cache)
        self._opening = ids.shape[1]
        self.patch = torch.full((self._opening,), -1, dtype=torch.long)

    @property
    def opening(self) -> int:
        return self._opening

    def new_cache(self, capacity: int) -> KVCache:
        return self.backend.new_cache(1, capacity=capacity)

    def encode_frame(self, pixels: torch.Tensor, time: float) -> torch.Tensor:
        """(3, H, W) -> (patches, hidden); frame times are not encoded (the frames are images)."""
        self.grid = pixels.shape[-1] // self.patch_px
        return self.backend.encode_images(**self.chat.pictures(pixels[None], self.grid))

    @torch.no_grad()
    def append_frame(self, visual: torch.Tensor, patches: torch.Tensor, frame: int) -> int:
        if frame <= self.last_frame:
            raise StreamMemoryError(f"frame {frame} arrives after frame {self.last_frame}; frames must come in order")
        device, n = visual.device, visual.shape[0]
        start = int(self.cache.next_position[0])
        base, end = start + 1, start + 1 + self.grid
        markers = self.backend.embed_tokens(torch.tensor([[self.start_id, self.end_id]], device=device), torch.zeros(1, 2, dtype=torch.long, device=device))
        embeds = torch.cat([markers.embeds[0, :1], visual.to(markers.embeds.dtype), markers.embeds[0, 1:]])
        patches = patches.to(device)
        rows, cols = patches // self.grid, patches % self.grid
        rope_positions = torch.cat([torch.full((1, 3), start, device=device), torch.stack([base + 0 * rows, base + rows, base + cols], dim=-1),
                                    torch.full((1, 3), end, device=device)])
        positions = rope_positions[:, 0]
        modality = torch.full((n + 2,), VISUAL, dtype=torch.long, device=device)
        modality[[0, -1]] = TEXT
        token_ids = torch.full((n + 2,), -1, dtype=torch.long, device=device)
        token_ids[0], token_ids[-1] = self.start_id, self.end_id
        inputs = HFInputs(embeds[None], positions[None], modality[None], torch.full((1, n + 2), frame, device=device), token_ids[None], rope_positions[None])
        self.backend.prefill(inputs, self.cache)
        self.patch = torch.cat([self.patch, torch.tensor([-1]), patches.cpu(), torch.tensor([-1])])
        self.last_frame = frame
        return self.length

    def reposition(self, cache: KVCache) -> None:
        """Lay text slots and whole frames out again one after another (module docstring) and move
        every key to its new position."""
        view = cache[0].view()
        visual, frame = view.modality[0, 0] == VISUAL, view.frame[0, 0]
        same_run_next = visual[:-1] & visual[1:] & (frame[:-1] == frame[1:])
        last_of_run = visual.clone()
        last_of_run[:-1] &= ~same_run_next
        extent = torch.where(visual, torch.where(last_of_run, self.grid, 0), 1)
        new = torch.cumsum(extent, 0) - extent
        for layer in cache.layers:
            v = layer.view()
            target = new.to(v.position.device).expand_as(v.position)
            v.keys.copy_(rotate(v.keys, target - v.position, self.theta))
            v.position.copy_(target)
        cache.next_position.fill_(int(new[-1] + extent[-1]) if len(new) else 0)

    def question_ids(self, question: tuple[str, ...]) -> list[int]:
        return self.chat.tokenize(question_text(question, video=True) + self.closing)

    def question_queries(self, cache: KVCache, question_ids: list[int]) -> list[torch.Tensor]:
        device = cache.next_position.device
        positions = cache.next_position[:, None] + torch.arange(len(question_ids), device=device)
        with self.backend.query_tap() as tap:
            self.backend.decode(torch.tensor([question_ids], device=device), cache)
        return [rope(q, -positions, self.theta).transpose(1, 2) for q in tap.latest]

    @torch.no_grad()
    def answer(self, cache: KVCache, question_ids: list[int], max_new_tokens: int) -> tuple[float, tuple[str, ...]]:
        device = cache.next_position.device
        logits = self.backend.decode(torch.tensor([question_ids], device=device), cache).logits[0, -1]
        first = time.perf_counter()
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax())
            if token == self.chat.eos:
                break
            tokens.append(token)
            logits = self.backend.decode(torch.tensor([[token]], device=device), cache).logits[0, -1]
        return first, tuple(self.chat.words(tokens))


def open_memory(prompter: Prompter, reserve: int = 0) -> StreamMemory:
    """A fresh streaming memory for the prompter's model."""
    return ChatStreamMemory(prompter, reserve) if isinstance(prompter, ChatPrompter) else StreamMemory(prompter.model, reserve)


def markers_per_frame(prompter: Prompter) -> int:
    return (ChatStreamMemory if isinstance(prompter, ChatPrompter) else StreamMemory).markers_per_frame
