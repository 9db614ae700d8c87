"""`PressedVLM`: an lmms-eval model that answers with a Qwen2.5-VL checkpoint under one of our comparison's presses.

Model arguments (`--model_args key=value,...`): `pretrained` (a local checkpoint directory), `press` (`none` or a
name of `presses.compare.PRESSES`), `budget` (share of the image entries kept, in (0, 1]), `device`, `dtype`,
`efficiency_log` (a JSON file to write the efficiency figures to). Each request runs as the comparison runs a prompt
(`compare.run_episode`): the chat prefix and the images prefilled under the press, then the question, then a
greedy answer. Beside lmms-eval's scores, the model logs per request the bytes of the context entries a decode step
attends (KV bytes), the time to the first token and the median time per later token.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from lmms_eval.api.model import lmms
from loguru import logger

from pilot_experiments.backends.hf import _rope_index
from pilot_experiments.backends.prompts import ChatPrompter
from pilot_experiments.harness import HarnessError
from pilot_experiments.presses.compare import (
    PRESSES,
    TEXT_ONLY,
    Episode,
    keeping,
    run_episode,
)


class LmmsError(HarnessError):
    """Model arguments lmms-eval passed that cannot work (unknown press, budget outside (0, 1]); a checkpoint directory
    without weights is the backend's `BackendError`."""


class PressedVLM(lmms):
    """A Qwen2.5-VL checkpoint under one press (see the module docstring)."""

    is_simple = True

    def __init__(self, pretrained: str, press: str = "none", budget: float = 1.0, device: str = "cpu",
                 dtype: str = "float32", max_new_tokens: int = 32, efficiency_log: str = "", **kwargs) -> None:
        super().__init__()
        if press != "none" and press not in PRESSES:
            raise LmmsError(f"press={press}: unknown; choose none or one of {', '.join(PRESSES)}")
        if press in TEXT_ONLY:
            raise LmmsError(f"press={press} cannot run on Qwen2.5-VL: {TEXT_ONLY[press]}")
        budget = float(budget)
        if not 0 < budget <= 1:
            raise LmmsError(f"budget={budget} must lie in (0, 1]: the share of the image's entries kept")
        self.prompter = ChatPrompter.from_pretrained(pretrained, dtype=getattr(torch, dtype), device=device)
        self.model = self.prompter.backend.model
        if self.model.config._attn_implementation == "eager":
            self.model.set_attn_implementation("sdpa")  # kvpress masks heads through its sdpa patch
        self.press, self.budget, self.max_new = press, budget, int(max_new_tokens)
        self.efficiency_log = efficiency_log
        self.figures: list[dict] = []

    def episode(self, images: list, text: str) -> Episode:
        """The request as the comparison splits a prompt: context up to the last image, then the question."""
        prompter, config = self.prompter, self.model.config
        pictures = prompter.image_processor(images=images, return_tensors="pt")
        grid = pictures["image_grid_thw"].to(prompter.backend.device)
        ids = prompter.tokenize(prompter._chat("".join(prompter.image_tokens) * len(images) + text))
        counts = iter((grid.prod(-1) // prompter.merge**2).tolist())
        ids = torch.tensor([[t for i in ids for t in ([config.image_token_id] * next(counts) if i == config.image_token_id else [i])]],
                           device=prompter.backend.device)
        image = ids == config.image_token_id
        split = int(torch.nonzero(ids[0] == config.vision_end_token_id)[-1]) + 1 if images else 1
        positions, _ = _rope_index(self.model.model, ids, image, grid)
        context = {"input_ids": ids[:, :split]}
        if images:
            context |= {"pixel_values": pictures["pixel_values"].to(prompter.backend.device, prompter.backend.dtype), "image_grid_thw": grid}
        return Episode(context, ids[:, split:], positions, image[:, :split], references=[])

    def answer(self, images: list, text: str, max_new: int) -> tuple[str, dict]:
        episode = self.episode(images, text)
        press = None
        if self.press != "none" and bool(episode.visual.any()):
            length, n_image = episode.visual.shape[1], int(episode.visual.sum())
            press = PRESSES[self.press][1](keeping(length, length - n_image + round(self.budget * n_image)), episode.visual)
        run = run_episode(self.model, episode, press, max_new, self.prompter.eos)
        text = self.prompter.tokenizer.decode(run.tokens, skip_special_tokens=True)
        return text, {"kv_bytes": run.kv_bytes, "context_attended_pct": 100 * run.share, "ttft_ms": 1000 * run.ttft_s,
                      "tpot_ms": 1000 * run.tpot_s, "tokens": len(run.tokens)}

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            images = [image.convert("RGB") for image in doc_to_visual(self.task_dict[task][split][doc_id]) or []]
            text, figures = self.answer(images, context.replace("<image>", ""), int(gen_kwargs.get("max_new_tokens", self.max_new)))
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                text = text.split(stop)[0] if stop else text
            self.figures.append(figures)
            out.append(text)
        self.log_efficiency()
        return out

    def log_efficiency(self) -> None:
        """Medians over the requests so far, logged and, with `efficiency_log`, written as JSON."""
        if not self.figures:
            return
        summary = {"press": self.press, "budget": self.budget, "requests": len(self.figures),
                   **{f"{key}_median": statistics.median(f[key] for f in self.figures)
                      for key in ("kv_bytes", "context_attended_pct", "ttft_ms", "tpot_ms")}}
        logger.info(f"efficiency: {summary}")
        if self.efficiency_log:
            Path(self.efficiency_log).parent.mkdir(parents=True, exist_ok=True)
            Path(self.efficiency_log).write_text(json.dumps({"summary": summary, "requests": self.figures}, indent=2) + "\n")

    def loglikelihood(self, requests):
        raise NotImplementedError("efficient_lvlm answers generation tasks (output_type: generate_until) only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("efficient_lvlm answers single-round generation tasks only")
