"""The hybrid-kv study: every policy x budget on held-out SynthVis image and video questions,
plus a long-context latency benchmark, compared with the survey's Tables 7 and 8.

Protocols (`records.PROTOCOLS`). Question-agnostic, the primary one and the way kvpress measures: the
context `<bos> (<img> visual)*` is prefilled with the full cache while the query projections are
tapped, every policy scores with the attention of the context's last `context_window` entries and
compresses, and only then is the question prefilled onto the compressed cache; the compressed cache
is built once per episode and copied for each of its questions. Question-aware: the whole prompt,
question included, is prefilled and the question's attention scores the cache. Multi-turn: two of
an episode's questions in turn on one question-agnostic compressed cache (the first answer stays in
the cache), the second answer scored. In every protocol `<ans>` and the answer are decoded greedily
under the compressed cache, so that every answer token is produced by it. Accuracy is measured on
the compacted cache; masked and compacted caches attend the same entries (a test checks it), and
both are measured for memory and latency.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import torch

from pilot_experiments import harness, metrics, synthvis, train
from pilot_experiments.backends.prompts import ChatPrompter, Prompter, ReferencePrompter
from pilot_experiments.kvcache import VISUAL, KVCache, LayerCache
from pilot_experiments.studies.hybrid_kv import report
from pilot_experiments.model import Inputs
from pilot_experiments.studies.hybrid_kv.records import METHODS, PROTOCOLS, Answer, HybridKVConfig, Tally
from pilot_experiments.studies.hybrid_kv.calibration import visual_head_scores
from pilot_experiments.studies.hybrid_kv.hybrid import Hybrid, RetrievalLayerCache
from pilot_experiments.studies.hybrid_kv.observe import Observation, observe
from pilot_experiments.studies.hybrid_kv.policies import FullCache, LookM, MadaKV, Policy, PolicyError, SparseMM

STUDY = "hybrid-kv"
IMAGE_FAMILIES = ("image", "multi")


PRESETS = {
    "smoke": HybridKVConfig("smoke", size="draft", image_episodes=2, multi_episodes=0, video_episodes=0, calibration_episodes=3,
                            budgets=(1.0, 0.2), latency_frames=4, latency_tokens=4, latency_repeats=1),
    "cpu": HybridKVConfig("cpu"),
    "gpu": HybridKVConfig("gpu", size="large", image_episodes=150, multi_episodes=50, video_episodes=150, calibration_episodes=100,
                          latency_frames=48, latency_tokens=64, latency_repeats=5, dtype="bfloat16"),
}


def config_for(preset: str, device: str = "cpu", model: str | None = None, dtype: str | None = None) -> HybridKVConfig:
    harness.check_preset(preset)
    from dataclasses import replace

    return replace(PRESETS[preset], device=device, model=model, dtype=dtype or PRESETS[preset].dtype)


def make_policy(method: str, budget: float, cfg: HybridKVConfig, head_scores: torch.Tensor) -> Policy:
    if method == "FullCache":
        return FullCache()
    if method == "LookM":
        return LookM(budget)
    if method == "MadaKV":
        return MadaKV(budget)
    if method == "SparseMM":
        return SparseMM(budget, head_scores=head_scores)
    if method == "Hybrid":
        return Hybrid(budget, dynamic_fraction=cfg.dynamic_fraction, chunk=cfg.chunk)
    raise PolicyError(f"unknown method {method!r}; choose from {METHODS}")


def run_configs(cfg: HybridKVConfig) -> list[tuple[str, float]]:
    """(method, budget) pairs to run: the full cache once, every other method below 100 % (at
    100 % a policy keeps every entry; the tests check that it then matches the full cache)."""
    return [("FullCache", 1.0)] + [(m, b) for m in cfg.methods if m != "FullCache" for b in cfg.budgets if b < 1.0]


# ----------------------------------------------------------------------------- measuring one cache


def attended_visual(layer: LayerCache) -> int:
    """Visual entries a decode step attends in this layer, summed over batch and heads."""
    if isinstance(layer, RetrievalLayerCache):
        return int(layer.attended_visual().sum())
    hot = layer.view()
    count = int((hot.valid & (hot.modality == VISUAL)).sum())
    return count + sum(int((b.meta.valid & (b.meta.modality == VISUAL)).sum()) for b in layer.quant)


def prompt_resident_bytes(cache: KVCache) -> int:
    """Resident KV bytes less the free slots reserved for answer tokens (the same reserve for every
    policy), i.e. what the (compressed) prompt occupies on the compute device."""
    free = 0
    for layer in cache.layers:
        per_slot = layer.batch * layer.kv_heads * layer.head_dim * 2 * torch.finfo(layer.dtype).bits // 8
        free += (layer.capacity - layer.length) * per_slot
    return cache.bytes().resident - free


def kept_fractions(cache: KVCache, obs: Observation, prompt_length: int) -> tuple[float, float]:
    """(visual fraction, total fraction) of the prompt's entries a decode step attends."""
    visual = obs.visual.sum().item() * len(cache.layers)
    text = (prompt_length * obs.visual.shape[0] * obs.visual.shape[1] * len(cache.layers)) - visual
    kept_visual = sum(attended_visual(layer) for layer in cache.layers)
    return kept_visual / visual, (kept_visual + text) / (visual + text)


@torch.no_grad()
def compressed(cache: KVCache, obs: Observation, policy: Policy, *, compact: bool, reserve: int) -> tuple[KVCache, float, float, float]:
    """A compressed copy of the prefilled `cache` (compacted with `reserve` free slots), the seconds compression took,
    and the (visual, total) fractions of the prefilled entries a decode step attends."""
    prompt_length = cache.length
    cache = copy.deepcopy(cache)
    clock = metrics.Clock(cache[0].device)
    begun = clock.start()
    policy.compress(cache, obs)
    if compact:
        cache.compact(reserve=reserve)
    compress_s = clock.stop(begun)
    return (cache, compress_s, *kept_fractions(cache, obs, prompt_length))


def moved_bytes(cache: KVCache) -> int:
    """Bytes copied so far from the offload store back to the compute device (Hybrid's retrieved chunks)."""
    return sum(layer.moved_bytes for layer in cache.layers if isinstance(layer, RetrievalLayerCache))


@torch.no_grad()
def respond(prompter: Prompter, cache: KVCache, question: Inputs | None, max_new: int) -> tuple[list[int], list[float], dict, float]:
    """Prefill `question` (if any) onto the compressed `cache`, then decode the answer start (`<ans>` for the reference
    LVLM) and the answer greedily: the answer tokens, each decode step's seconds, the cache's bytes, and the bytes
    copied back from the offload store per decode step."""
    backend = prompter.backend
    if question is not None:
        backend.prefill(question, cache)
    moved = moved_bytes(cache)
    token, out, steps, sizes = prompter.answer_start, [], [], None
    clock = metrics.Clock(backend.device)
    for _ in range(max_new):
        begun = clock.start()
        logits = backend.decode(torch.tensor([[token]], device=backend.device), cache).logits[:, -1]
        token = int(logits.argmax(-1))
        steps.append(clock.stop(begun))
        if sizes is None:  # after the first step, so that retrieval's working set is in place
            sizes = {**metrics.kv_bytes(cache), "prompt_resident": prompt_resident_bytes(cache)}
        if token == prompter.eos:
            break
        out.append(token)
    return out, steps, sizes, (moved_bytes(cache) - moved) / len(steps)


@torch.no_grad()
def answer(prompter: Prompter, cache: KVCache, obs: Observation, policy: Policy, *, compact: bool, max_new: int) -> Answer:
    """Question-aware: compress a copy of the prefilled prompt's `cache` (question included) and answer."""
    cache, compress_s, visual_kept, total_kept = compressed(cache, obs, policy, compact=compact, reserve=max_new + 1)
    tokens, steps, sizes, moved = respond(prompter, cache, None, max_new)
    return Answer(tokens, steps, compress_s, sizes, visual_kept, total_kept, moved)


def split_prompt(inputs: Inputs) -> tuple[Inputs, Inputs]:
    """(context, question): the prompt cut right after its last visual entry."""
    visual = torch.nonzero(inputs.modality[0] == VISUAL)
    if len(visual) == 0:
        raise PolicyError("the prompt has no visual entries to compress")
    cut = int(visual[-1]) + 1

    def part(sl: slice) -> Inputs:
        return Inputs(*(t[:, sl] for t in (inputs.embeds, inputs.positions, inputs.modality, inputs.frame, inputs.token_ids)))

    return part(slice(None, cut)), part(slice(cut, None))


def shifted(question: Inputs, start: int, backend, lead: list[int]) -> Inputs:
    """The question's text tokens, preceded by `lead` tokens, re-embedded at positions from `start`: a later turn."""
    ids = torch.tensor([lead + question.token_ids[0].tolist()], device=question.token_ids.device)
    return backend.embed_tokens(ids, torch.arange(start, start + ids.shape[1], device=ids.device)[None])


def score(kind: str, predicted: list[str], truth: tuple[str, ...]) -> float:
    return train.caption_f1(predicted, truth) if kind == "caption" else metrics.exact_match(predicted, truth)


# ----------------------------------------------------------------------------- the study


def load_model(cfg: HybridKVConfig) -> tuple[Prompter, train.TrainConfig, dict[str, float]]:
    """The model to study (cast to the run's dtype), the training config whose world settings
    (image size, video length, objects) the episodes follow, and the model's test-split quality
    from training (empty for a checkpoint given with `cfg.model`)."""
    dtype = getattr(torch, cfg.dtype)
    if cfg.model is not None:
        return ChatPrompter.from_pretrained(cfg.model, dtype=dtype, device=cfg.device), train.train_config(cfg.preset), {}
    result = train.load_or_train(cfg.size, cfg.preset, cfg.device)
    return ReferencePrompter(result.model.to(dtype).eval()), result.train_config, result.metrics


def episodes(cfg: HybridKVConfig, tc: train.TrainConfig) -> list[tuple[str, synthvis.Episode]]:
    counts = {"image": cfg.image_episodes, "multi": cfg.multi_episodes, "video": cfg.video_episodes}
    return [(family, train.family_episode(family, cfg.split, tc.seed, i, tc)) for family, n in counts.items() for i in range(n)]


@torch.no_grad()
def evaluate(prompter: Prompter, cfg: HybridKVConfig, tc: train.TrainConfig,
             head_scores: torch.Tensor) -> dict[str, dict[tuple[str, float], Tally]]:
    """Tallies per protocol, per (method, budget), over the same questions in the same order."""
    configs = run_configs(cfg)
    protocols = [p for p in cfg.protocols if p != "multi-turn" or isinstance(prompter, ReferencePrompter)]
    tallies = {p: {c: Tally() for c in configs} for p in protocols}
    eps = episodes(cfg, tc)
    backend = prompter.backend
    with harness.progress() as bar, backend.query_tap() as tap:
        task = bar.add_task(f"{STUDY}: {len(configs)} configs x {len(protocols)} protocols", total=len(eps))
        for family, ep in eps:
            prompts = [prompter.prompt(ep, qa.question, with_answer_start=False) for qa in ep.qas]
            limits = [len(qa.answer) + 8 for qa in ep.qas]
            if "question-aware" in tallies:
                for qa, inputs, max_new in zip(ep.qas, prompts, limits):
                    cache = backend.new_cache(1, capacity=inputs.length + max_new + 2)
                    backend.prefill(inputs, cache)
                    obs = observe(tap, cache)
                    for method, budget in configs:
                        ans = answer(prompter, cache, obs, make_policy(method, budget, cfg, head_scores), compact=True, max_new=max_new)
                        tallies["question-aware"][(method, budget)].add(family, qa.kind, score(qa.kind, prompter.words(ans.tokens), qa.answer), ans)
            if "question-agnostic" in tallies or "multi-turn" in tallies:
                agnostic(prompter, cfg, head_scores, tap, family, ep, prompts, limits, tallies)
            bar.update(task, advance=1)
    return tallies


@torch.no_grad()
def agnostic(prompter: Prompter, cfg: HybridKVConfig, head_scores: torch.Tensor, tap, family: str, ep: synthvis.Episode,
             prompts: list[Inputs], limits: list[int], tallies: dict) -> None:
    """One episode under the question-agnostic and multi-turn protocols: the context is prefilled and compressed once
    per policy, then each question (or pair of questions) is answered on a copy of the compressed cache."""
    backend = prompter.backend
    context, _ = split_prompt(prompts[0])
    questions = [split_prompt(p)[1] for p in prompts]
    reserve = 2 * max(q.length for q in questions) + 2 * max(limits) + 4
    cache = backend.new_cache(1, capacity=context.length + reserve)
    backend.prefill(context, cache)
    obs = observe(tap, cache, window=min(cfg.context_window, context.length))
    for method, budget in run_configs(cfg):
        shrunk, compress_s, visual_kept, total_kept = compressed(cache, obs, make_policy(method, budget, cfg, head_scores),
                                                                compact=True, reserve=reserve)
        def fresh() -> KVCache:  # a copy of the compressed cache that still reads the live query tap (retrieval uses it)
            return copy.deepcopy(shrunk, {id(tap): tap})

        if "question-agnostic" in tallies:
            for qa, question, max_new in zip(ep.qas, questions, limits):
                tokens, steps, sizes, moved = respond(prompter, fresh(), question, max_new)
                tallies["question-agnostic"][(method, budget)].add(
                    family, qa.kind, score(qa.kind, prompter.words(tokens), qa.answer),
                    Answer(tokens, steps, compress_s, sizes, visual_kept, total_kept, moved))
        if "multi-turn" in tallies:
            for first in range(0, len(ep.qas) - 1, 2):
                turn = fresh()
                respond(prompter, turn, questions[first], limits[first])
                second = shifted(questions[first + 1], int(turn.next_position[0]), backend, [prompter.eos])
                qa = ep.qas[first + 1]
                tokens, steps, sizes, moved = respond(prompter, turn, second, limits[first + 1])
                tallies["multi-turn"][(method, budget)].add(
                    family, qa.kind, score(qa.kind, prompter.words(tokens), qa.answer),
                    Answer(tokens, steps, compress_s, sizes, visual_kept, total_kept, moved))


@torch.no_grad()
def latency(prompter: Prompter, cfg: HybridKVConfig, tc: train.TrainConfig, head_scores: torch.Tensor) -> dict[tuple[str, float, str], dict]:
    """TTFT (prefill + scoring + compression) and median time per output token on one long video
    prompt where visual entries dominate, for every method x budget, masked and compacted.

    One warm-up round runs every configuration; then `latency_repeats` timed rounds run every configuration
    once each, in an order rotated by one place per round, so no method always runs first or right after a
    particular other one. Each figure is the median over the rounds, with its interquartile range."""
    ep = synthvis.video_episode("test", tc.seed, 0, n_frames=cfg.latency_frames, frame_px=tc.frame_px, stride=1, max_objects=2)
    inputs = prompter.prompt(ep, ep.qas[0].question)
    device = prompter.backend.device
    keys = [(method, budget, mode) for method, budget in run_configs(cfg) for mode in ("masked", "compacted")]
    policies = {key: make_policy(key[0], key[1], cfg, head_scores) for key in keys}
    sizes: dict[tuple, dict] = {key: {} for key in keys}
    samples: dict[tuple, dict[str, list]] = {key: {"ttft": [], "tpot": [], "peak": [], "delta": []} for key in keys}
    exact = True
    with harness.progress() as bar, prompter.backend.query_tap() as tap:
        task = bar.add_task(f"{STUDY}: latency at {inputs.length} tokens", total=len(keys) * (1 + cfg.latency_repeats))
        for round_ in range(1 + cfg.latency_repeats):  # round 0 is the warm-up
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                method, budget, mode = key

                def after_prefill(cache: KVCache, key=key, mode=mode) -> None:
                    policies[key].compress(cache, observe(tap, cache))
                    if mode == "compacted":
                        cache.compact(reserve=cfg.latency_tokens + 1)
                    sizes[key].update(metrics.kv_bytes(cache), prompt_resident=prompt_resident_bytes(cache))

                with metrics.PeakMemory(device) as peak:
                    timing = metrics.time_generation(prompter.backend, inputs, cfg.latency_tokens, warmup=0, repeats=1,
                                                     after_prefill=after_prefill)
                if round_:
                    got = samples[key]
                    got["ttft"].append(timing.ttft_s * 1e3)
                    got["tpot"].append(timing.tpot_s * 1e3)
                    got["peak"].append(peak.peak_bytes)
                    got["delta"].append(peak.delta_bytes)
                    exact = exact and peak.exact
                bar.update(task, advance=1)
    out = {}
    for key in keys:
        got, size = samples[key], sizes[key]
        out[key] = {
            "context": inputs.length, "ttft_ms": statistics.median(got["ttft"]), "tpot_ms": statistics.median(got["tpot"]),
            "ttft_iqr_ms": _iqr(got["ttft"]), "tpot_iqr_ms": _iqr(got["tpot"]), "rounds": len(got["tpot"]),
            "peak_bytes": max(got["peak"]), "peak_delta_bytes": max(got["delta"]), "peak_exact": exact,
            "resident_bytes": size["resident"], "prompt_resident_bytes": size["prompt_resident"],
            "logical_bytes": size["logical"], "offloaded_bytes": size["offloaded"],
        }
    return out


def _iqr(values: list[float]) -> list[float]:
    """First and third quartiles (equal to the value itself for one sample)."""
    if len(values) < 2:
        return [values[0], values[0]] if values else [float("nan"), float("nan")]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [q1, q3]


def run(cfg: HybridKVConfig) -> harness.StudyRecord:
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    prompter, tc, quality = load_model(cfg)
    calibration = [train.family_episode("image", "val", tc.seed, i, tc) for i in range(cfg.calibration_episodes)]
    head_scores = visual_head_scores(prompter, calibration)
    tallies = evaluate(prompter, cfg, tc, head_scores)
    timings = latency(prompter, cfg, tc, head_scores)
    return report.build(cfg, tallies, timings, head_scores, prompter, quality)


# ----------------------------------------------------------------------------- command line


def run_cli(args) -> int:
    if args.engine == "kvpress":
        try:
            from pilot_experiments.presses import compare
        except ImportError as err:
            raise harness.HarnessError(f"--engine kvpress needs kvpress and transformers ({err}): pip install -e '.[hf,kvpress]'") from None
        return compare.run_cli(args)
    study, device = harness.checkpoint_run(args, STUDY)
    cfg = config_for(args.preset, str(device), model=args.model, dtype=args.dtype)
    path = harness.run_study(study, args.preset, run, cfg, seed=cfg.seed, device=device, results_dir=Path(args.results_dir))
    print(f"results: {path} (+ .md, .svg)")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(STUDY, help="hybrid KV-cache compression by head type vs LOOK-M, MadaKV, SparseMM (survey Tables 7-8)")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    harness.add_checkpoint_arguments(p)
    p.add_argument("--engine", choices=("study", "kvpress"), default="study",
                   help="kvpress: our presses beside kvpress's on SmolLM2 (or --model, a Qwen2.5-VL directory), kvpress's protocol")
    p.add_argument("--press", action="append", help="with --engine kvpress: a press to run (repeatable; default: all)")
    p.add_argument("--budget", action="append", type=float, help="with --engine kvpress: share of the image entries kept (repeatable; default: 0.5 and 0.2)")
    p.add_argument("--episodes", type=int, help="with --engine kvpress: prompts to run (default: every written scene, or 8 pictures)")
    p.set_defaults(handler=run_cli)
