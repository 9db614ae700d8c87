"""`PressedVLM`: an lmms-eval model that answers with a Qwen2.5-VL checkpoint under one of our comparison's presses.

Model arguments (`--model_args key=value,...`): `pretrained` (a local checkpoint directory), `press` (`none` or a
name of `presses.compare.PRESSES`), `budget` (share of the image entries kept, in (0, 1]), `device`, `dtype`,
`efficiency_log` (a JSON file to write the efficiency figures to). Each request runs as the comparison runs a prompt
(`compare.run_episode`): the chat prefix and the images prefilled under the press, then the question, then a
greedy answer. Beside lmms-eval's scores, the model logs per request the bytes of the context entries a decode step
attends (KV bytes), the time to the first token and the median time per later token.

Instead of a press, `rule` (`strict`, `random` or `function-word`) answers by speculative decoding as the
relaxed-spec study does: the checkpoint's own weights draft while reading `draft_keep` of the image tokens (the
ones the target's prefill attends to most, SpecVLM-style), `gamma` tokens a step, and the target verifies them
under the rule; the log then also gives the tokens emitted per target pass.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from lmms_eval.api.model import lmms
from loguru import logger

from pilot_experiments import metrics
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
from pilot_experiments.studies.relaxed_spec.decoding import speculative
from pilot_experiments.studies.relaxed_spec.pruning import (
    VisualPruning,
    text_to_visual_scores,
)
from pilot_experiments.studies.relaxed_spec.rules import (
    ModalityAwareRelaxation,
    RandomRelaxation,
    StrictMatch,
)

# verification rules by name, from the checkpoint's (content, special) token masks; as in real-checkpoints
RULES = {
    "strict": lambda content, special: StrictMatch(),
    "random": lambda content, special: RandomRelaxation(0.5),
    "function-word": lambda content, special: ModalityAwareRelaxation(content_mask=content, special_mask=special, rate=1.0, top_k=5),
}


class LmmsError(HarnessError):
    """Model arguments lmms-eval passed that cannot work (unknown press, budget outside (0, 1]); a checkpoint directory
    without weights is the backend's `BackendError`."""


class PressedVLM(lmms):
    """A Qwen2.5-VL checkpoint under one press (see the module docstring)."""

    is_simple = True

    def __init__(self, pretrained: str, press: str = "none", budget: float = 1.0, device: str = "cpu",
                 dtype: str = "float32", max_new_tokens: int = 32, efficiency_log: str = "", rule: str = "none",
                 gamma: int = 4, draft_keep: float = 0.25, **kwargs) -> None:
        super().__init__()
        if rule != "none" and rule not in RULES:
            raise LmmsError(f"rule={rule}: unknown; choose none or one of {', '.join(RULES)}")
        if rule != "none" and press != "none":
            raise LmmsError(f"press={press} and rule={rule}: choose one (a press compresses the cache, a rule verifies drafts)")
        draft_keep, gamma = float(draft_keep), int(gamma)
        if not 0 < draft_keep <= 1 or gamma < 1:
            raise LmmsError(f"draft_keep={draft_keep} must lie in (0, 1] and gamma={gamma} be at least 1")
        self.rule, self.gamma, self.draft_keep = rule, gamma, draft_keep
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

    def encode(self, images: list, text: str) -> dict[str, torch.Tensor]:
        """`input_ids` with every image placeholder expanded, `pixel_values`, `image_grid_thw` (as the checkpoint's
        processor would give them)."""
        prompter, config, device = self.prompter, self.model.config, self.prompter.backend.device
        ids = prompter.tokenize(prompter._chat("".join(prompter.image_tokens) * len(images) + text))
        if not images:
            return {"input_ids": torch.tensor([ids], device=device)}
        pictures = prompter.image_processor(images=images, return_tensors="pt")
        grid = pictures["image_grid_thw"].to(device)
        counts = iter((grid.prod(-1) // prompter.merge**2).tolist())
        ids = [t for i in ids for t in ([config.image_token_id] * next(counts) if i == config.image_token_id else [i])]
        return {"input_ids": torch.tensor([ids], device=device), "image_grid_thw": grid,
                "pixel_values": pictures["pixel_values"].to(device, prompter.backend.dtype)}

    def episode(self, images: list, text: str) -> Episode:
        """The request as the comparison splits a prompt: context up to the last image, then the question."""
        config, inputs = self.model.config, self.encode(images, text)
        ids = inputs["input_ids"]
        image = ids == config.image_token_id
        split = int(torch.nonzero(ids[0] == config.vision_end_token_id)[-1]) + 1 if images else 1
        positions, _ = _rope_index(self.model.model, ids, image, inputs.get("image_grid_thw"))
        context = {"input_ids": ids[:, :split], **{k: v for k, v in inputs.items() if k != "input_ids"}}
        return Episode(context, ids[:, split:], positions, image[:, :split], references=[])

    def answer_speculatively(self, images: list, text: str, max_new: int) -> tuple[str, dict]:
        """Relaxed speculative decoding (see the module docstring): the answer and its figures."""
        backend, inputs = self.prompter.backend, self.encode(images, text)
        clock, extra = metrics.Clock(backend.device), max_new + self.gamma + 2
        begun = clock.start()
        target = backend.embed_prompt(**inputs)
        cache = backend.new_cache(1, capacity=target.length + extra)
        out = backend.prefill(target, cache, need_attn=bool(images))
        draft = backend.embed_prompt(**inputs)
        if images:
            draft = VisualPruning(1 - self.draft_keep).apply(draft, text_to_visual_scores(out.attn, target))
        draft_cache = backend.new_cache(1, capacity=draft.length + extra)
        backend.prefill(draft, draft_cache)
        ttft = clock.stop(begun)
        begun = clock.start()
        rule = RULES[self.rule](*self.prompter.class_masks())
        tokens, stats = speculative(backend, backend, cache, draft_cache, out.logits[0, -1], target.length, rule, self.gamma,
                                    max_new, self.prompter.eos)
        decode_s = clock.stop(begun)
        answer = self.prompter.tokenizer.decode(tokens, skip_special_tokens=True)
        return answer, {"tokens_per_target_pass": statistics.mean(stats.emitted) if stats.emitted else 1.0,
                        "prefill_ms": 1000 * ttft, "ms_per_token": 1000 * decode_s / max(1, len(tokens)), "tokens": len(tokens)}

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
            answer = self.answer if self.rule == "none" else self.answer_speculatively
            text, figures = answer(images, context.replace("<image>", ""), int(gen_kwargs.get("max_new_tokens", self.max_new)))
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
        keys = [key for key in self.figures[0] if key != "tokens"]
        setting = {"press": self.press, "budget": self.budget} if self.rule == "none" else \
            {"rule": self.rule, "gamma": self.gamma, "draft_keep": self.draft_keep}
        summary = {**setting, "requests": len(self.figures), **{f"{key}_median": statistics.median(f[key] for f in self.figures) for key in keys}}
        logger.info(f"efficiency: {summary}")
        if self.efficiency_log:
            Path(self.efficiency_log).parent.mkdir(parents=True, exist_ok=True)
            Path(self.efficiency_log).write_text(json.dumps({"summary": summary, "requests": self.figures}, indent=2) + "\n")

    def loglikelihood(self, requests):
        raise NotImplementedError("efficient_lvlm answers generation tasks (output_type: generate_until) only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("efficient_lvlm answers single-round generation tasks only")
