"""The streaming study: every policy reads the same SynthVis stream frame by frame and answers the
same questions at the same moments; we record resident KV, per-frame ingest latency, question
TTFT and accuracy by how far back the answer lies.

`run_streaming(config)` returns the harness's `StudyRecord`; the harness writes the files.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from pilot_experiments import metrics as metrics_lib
from pilot_experiments import synthvis
from pilot_experiments.backends.prompts import ChatPrompter, Prompter, ReferencePrompter
from pilot_experiments.harness import StudyRecord, check_preset, pick_device, progress
from pilot_experiments.metrics import Clock, PeakMemory
from pilot_experiments.studies.relaxed_spec.decoding import autoregressive
from pilot_experiments.studies.streaming.chat import markers_per_frame, open_memory
from pilot_experiments.studies.streaming.memory import StreamMemory, patchify
from pilot_experiments.studies.streaming.policies import (
    FrameBudget,
    FullCache,
    HierarchicalMemory,
    InfiniPot,
    SinkWindow,
    SlidingWindow,
    StreamPolicy,
)
from pilot_experiments.studies.streaming.report import MIN_FAR_QUESTIONS, notes, plot, rows
from pilot_experiments.studies.streaming.stream import (
    BINS,
    FrameStream,
    StreamQuestion,
    StreamSpec,
    build_stream,
    evidence_held,
)
from pilot_experiments.train import TrainResult, load_or_train

MIB = 2**20
POLICY_NAMES = ("full", "window", "sinks+window", "frame-budget", "infinipot", "hierarchical")


class StreamingStudyError(RuntimeError):
    """The study cannot run as configured (unknown preset, model that cannot read the stream)."""


@dataclass(frozen=True)
class StreamingConfig:
    """One run of the study. Lengths are in frames; the memory budget caps every policy's KV
    (working cache plus long-term store) and is where the full cache stops."""

    preset: str
    model_size: str
    train_preset: str
    n_frames: int
    seed: int = 0
    frame_px: int = 32
    time_per_frame: float = 0.6
    window_frames: int = 8
    sink_tokens: int = 4
    chunk_frames: int = 4
    top_chunks: int = 3
    coarse_after: int = 200
    tokens_per_frame: int = 16
    change: float = 0.02
    memory_budget_mib: float = 128.0
    near_max: int = 6
    middle_max: int = 100
    questions_per_bin: int = 12
    question_spans: tuple[int, ...] = (480,)  # a span ending before the full cache passes the budget
    sample_every: int = 10
    threads: int | None = 1  # torch CPU threads; one avoids oversubscribing a shared 2-core machine
    policies: tuple[str, ...] = POLICY_NAMES
    model: str | None = None  # a local Qwen2.5-VL checkpoint directory instead of the trained reference LVLM
    device: str | None = None  # default: CUDA when present (the gpu preset requires it), else the CPU
    dtype: str = "float32"  # of the checkpoint; the reference LVLM runs in float32

    def __post_init__(self) -> None:
        check_preset(self.preset)
        unknown = set(self.policies) - set(POLICY_NAMES)
        if unknown:
            raise StreamingStudyError(f"unknown policies {sorted(unknown)}; choose from {list(POLICY_NAMES)}")


PRESETS = {
    "smoke": StreamingConfig(
        "smoke", "draft", "smoke", n_frames=60, time_per_frame=1.0, window_frames=3, chunk_frames=2, top_chunks=2,
        coarse_after=20, tokens_per_frame=8, memory_budget_mib=3.0, near_max=2, middle_max=12, questions_per_bin=2, question_spans=(), sample_every=5,
    ),
    # the cpu preset reads a 2,000-frame stream once per policy, so it uses the cpu-trained draft
    # (3 layers) to stay within minutes on 2 shared cores; `--size target` swaps in the target. Up to 100
    # questions per bin in each span, so that the far-past comparisons rest on about a hundred questions
    "cpu": StreamingConfig("cpu", "draft", "cpu", n_frames=2000, questions_per_bin=100),
    "gpu": StreamingConfig(
        "gpu", "large", "gpu", n_frames=10000, threads=None, frame_px=64, time_per_frame=0.35, window_frames=16, chunk_frames=8,
        top_chunks=4, coarse_after=1000, tokens_per_frame=48, memory_budget_mib=8192.0, near_max=12, middle_max=500,
        questions_per_bin=30, question_spans=(1200,), sample_every=50,
    ),
}
def make_policies(cfg: StreamingConfig, tokens_per_frame: int, content_ids: frozenset[int]) -> dict[str, StreamPolicy]:
    """The policies of the study, sized so that every bounded one holds about the same number of
    working-cache entries as sinks + `window_frames` full frames; `content_ids` are the model's
    visual-content words, which the hierarchical memory's retrieval focuses on."""
    cap = cfg.sink_tokens + cfg.window_frames * tokens_per_frame
    grid = cfg.frame_px // 4
    every = {
        "full": FullCache(),
        "window": SlidingWindow(cfg.window_frames),
        "sinks+window": SinkWindow(cfg.sink_tokens, cfg.window_frames),
        "frame-budget": FrameBudget(cfg.tokens_per_frame, cfg.change, cap, cfg.sink_tokens),
        "infinipot": InfiniPot(cap, sink_tokens=cfg.sink_tokens),
        "hierarchical": HierarchicalMemory(
            cfg.window_frames, cfg.sink_tokens, cfg.chunk_frames, cfg.top_chunks, cfg.change, cfg.coarse_after, grid,
            content_ids=content_ids,
        ),
    }
    return {name: every[name] for name in cfg.policies}


@dataclass
class QuestionResult:
    question: StreamQuestion
    predicted: tuple[str, ...]
    ttft_s: float
    evidence_in_cache: bool
    retrieved: bool | None = None
    moved_bytes: int = 0  # brought back from the long-term store for this question

    @property
    def correct(self) -> bool:
        return self.predicted == self.question.answer


@dataclass
class PolicyRun:
    """What one policy did over one stream."""

    name: str
    frames_ingested: int = 0
    out_of_budget_at: int | None = None
    latency_s: list[float] = field(default_factory=list)
    attended: list[int] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    answers: list[QuestionResult] = field(default_factory=list)


@torch.no_grad()
def run_policy(prompter: Prompter, policy: StreamPolicy, stream: FrameStream, cfg: StreamingConfig, on_frame=None) -> PolicyRun:
    """Feed `stream` to a fresh copy of `policy`, asking each question when its time comes."""
    policy = replace(policy)
    device = prompter.backend.device
    memory = open_memory(prompter, reserve=policy.reserve(frame_entries(prompter, cfg)))
    run = PolicyRun(policy.name)
    previous = None
    budget = cfg.memory_budget_mib * MIB
    clock = Clock(device)
    for f in range(stream.n_frames):
        pixels = stream.pixels(f)[None].to(device)
        begun = clock.start()
        patches = patchify(pixels[0], memory.patch_px)
        picked = policy.tokens(patches, previous)
        visual = memory.encode_frame(pixels[0], f * cfg.time_per_frame)
        run.attended.append(memory.append_frame(visual[picked.to(device)], picked, f))
        policy.after_frame(memory)
        run.latency_s.append(clock.stop(begun))
        previous = patches
        run.frames_ingested = f + 1
        kv = memory.cache.bytes()
        long_term = policy.long_term_bytes()
        if f % cfg.sample_every == 0 or f == stream.n_frames - 1:
            run.samples.append({"frame": f, "resident": kv.resident, "logical": kv.logical, "long_term": long_term, "entries": memory.length})
        if on_frame is not None:
            on_frame()
        if kv.resident + long_term > budget:
            run.out_of_budget_at = f
            break
        for q in stream.questions_at(f):
            run.answers.append(ask(policy, memory, stream, q))
    return run


def frame_entries(prompter: Prompter, cfg: StreamingConfig) -> int:
    """Cache entries one whole frame adds: its visual tokens and its markers."""
    return (cfg.frame_px // 4) ** 2 + markers_per_frame(prompter)


def ask(policy: StreamPolicy, memory: StreamMemory, stream: FrameStream, q: StreamQuestion) -> QuestionResult:
    ids = memory.question_ids(q.question)
    start = time.perf_counter()
    cache, patch = policy.question_cache(memory, ids, extra=len(ids) + len(q.answer) + 2)
    first, words = memory.answer(cache, ids, len(q.answer) + 1)
    frame = cache[0].view().frame[0, 0, : len(patch)].cpu()
    held = evidence_held(stream, q, frame, patch)
    retrieved = None
    if isinstance(policy, HierarchicalMemory) and not evidence_held(stream, q, memory.frames(), memory.patch):
        retrieved = held  # the evidence had left the working cache: did retrieval bring it back?
    return QuestionResult(q, words, first - start, held, retrieved, policy.retrieved_bytes())


@torch.no_grad()
def oracle_clip(prompter: Prompter, stream: FrameStream, q: StreamQuestion, cfg: StreamingConfig) -> bool:
    """Reference, not a policy: the question read against a short clip laid out as the model reads
    a video episode (`<bos>`, or the chat template's opening), the evidence frames and the most
    recent frames (window_frames in all), then the question. Separates what memory loses from what
    the model cannot do anyway."""
    recent = [f for f in range(q.time, -1, -1) if f not in q.evidence][: max(0, cfg.window_frames - len(q.evidence))]
    frames = sorted(set(q.evidence) | set(recent))
    clip = synthvis.Episode(torch.stack([stream.pixels(f) for f in frames]), [f * cfg.time_per_frame for f in frames],
                            [stream.video.scene(f) for f in frames], [], stream.video)
    inputs = prompter.prompt(clip, q.question)
    backend = prompter.backend
    cache = backend.new_cache(1, capacity=inputs.length + len(q.answer) + 1)
    first = backend.prefill(inputs, cache).logits[0, -1]
    tokens = autoregressive(backend, cache, first, inputs.length, len(q.answer) + 1, prompter.eos)
    return tuple(prompter.words(tokens)) == q.answer


# ----------------------------------------------------------------------------- summaries


def _growth(counts: list[int]) -> float | None:
    """Largest count in the last quarter over the largest in the first quarter."""
    quarter = len(counts) // 4
    return max(counts[-quarter:]) / max(counts[:quarter]) if quarter else None


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else float("nan")


def summarise(run: PolicyRun, cfg: StreamingConfig) -> dict:
    lat = np.array(run.latency_s) * 1e3
    warm = min(len(lat) - 1, max(cfg.window_frames * 4, len(lat) // 10))
    steady = lat[warm:]
    quarters = np.array_split(steady, 4) if len(steady) >= 4 else [steady]
    by_bin = {}
    for b in BINS:
        rs = [r for r in run.answers if r.question.bin == b]
        by_bin[b] = {"n": len(rs), "accuracy": float(np.mean([r.correct for r in rs])) if rs else None,
                     "evidence_in_cache": float(np.mean([r.evidence_in_cache for r in rs])) if rs else None}
    retrieved = [r.retrieved for r in run.answers if r.retrieved is not None]
    resident = [s["resident"] for s in run.samples]
    after_warm = [s["resident"] for s in run.samples if s["frame"] >= warm]
    halves = [after_warm[: len(after_warm) // 2], after_warm[len(after_warm) // 2 :]]
    return {
        "frames_ingested": run.frames_ingested,
        "out_of_budget_at": run.out_of_budget_at,
        "latency_ms_median": float(np.median(lat)),
        "latency_ms_p99": float(np.quantile(lat, 0.99)),
        "latency_ms_median_by_quarter": [float(np.median(q)) for q in quarters],
        "attended_entries_first_last": [run.attended[warm], run.attended[-1]],
        "attended_growth": _growth(run.attended[warm:]),
        "resident_mib_final": resident[-1] / MIB,
        "resident_mib_peak": max(resident) / MIB,
        "resident_growth_after_warmup": max(halves[1]) / max(halves[0]) if all(halves) else None,
        "long_term_mib_final": run.samples[-1]["long_term"] / MIB,
        "peak_kv_mib": max(s["resident"] + s["long_term"] for s in run.samples) / MIB,
        "ttft_ms_median": _quantile([r.ttft_s * 1e3 for r in run.answers], 0.5),
        "moved_kib_per_question": _mean([r.moved_bytes / 1024 for r in run.answers]),
        "accuracy": by_bin,
        "retrieval_hit_rate": float(np.mean(retrieved)) if retrieved else None,
        "series": {k: [s[k] for s in run.samples] for k in ("frame", "resident", "long_term", "entries")},
        "latency_ms_full": lat.round(3).tolist(),
        "answers": [{"time": r.question.time, "question": " ".join(r.question.question), "bin": r.question.bin,
                     "distance": r.question.distance, "kind": r.question.kind,
                     "answer": " ".join(r.question.answer), "predicted": " ".join(r.predicted), "correct": r.correct,
                     "evidence_in_cache": r.evidence_in_cache, "retrieved": r.retrieved, "ttft_ms": r.ttft_s * 1e3} for r in run.answers],
    }


def load_model(cfg: StreamingConfig, device: torch.device, trained: TrainResult | None = None) -> tuple[Prompter, dict]:
    """The model to stream into and what the report says of it: the checkpoint `cfg.model`, or the
    reference LVLM `trained` (default: the cached, or newly trained, size the config names)."""
    if cfg.model is not None:
        chat = ChatPrompter.from_pretrained(cfg.model, dtype=getattr(torch, cfg.dtype), device=str(device))
        return chat, {"checkpoint": cfg.model, "label": chat.label, "params": chat.params}
    trained = load_or_train(cfg.model_size, cfg.train_preset, str(device)) if trained is None else trained
    return ReferencePrompter(trained.model), {"size": trained.model_config.name, "train_preset": trained.train_config.preset,
                                              "test_metrics": trained.metrics, "params": trained.params}


def run_streaming(cfg: StreamingConfig, trained: TrainResult | None = None) -> StudyRecord:
    """Run every policy of `cfg` over one stream (see `load_model` for the model)."""
    device = torch.device(cfg.device) if cfg.device else pick_device(cfg.preset)
    if cfg.threads is not None and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    prompter, model_info = load_model(cfg, device, trained)
    spec = StreamSpec(cfg.n_frames, cfg.frame_px, 4, near_max=cfg.near_max, middle_max=cfg.middle_max,
                      questions_per_bin=cfg.questions_per_bin, spans=cfg.question_spans)
    stream = build_stream(spec, cfg.seed)
    units = frame_entries(prompter, cfg)
    policies = make_policies(cfg, units, frozenset(torch.nonzero(prompter.class_masks()[0]).flatten().tolist()))
    runs = {}
    with progress() as bar:
        task = bar.add_task("streaming", total=len(policies) * cfg.n_frames)
        for name, policy in policies.items():
            bar.update(task, description=f"streaming {name}")
            with PeakMemory(device) as peak:
                run = run_policy(prompter, policy, stream, cfg, on_frame=lambda: bar.advance(task))
            bar.update(task, completed=(list(policies).index(name) + 1) * cfg.n_frames)
            runs[name] = summarise(run, cfg)
            runs[name]["process_peak_mib"] = {"delta": peak.delta_bytes / MIB, "exact": peak.exact}
    oracle = [(q, oracle_clip(prompter, stream, q, cfg)) for q in stream.questions]
    metrics = {
        "oracle_clip_accuracy": {b: _mean([ok for q, ok in oracle if q.bin == b]) for b in BINS},
        "model": model_info,
        "stream": {"n_frames": cfg.n_frames, "questions": {b: sum(q.bin == b for q in stream.questions) for b in BINS},
                   "tracks": len(stream.video.tracks), "visual_tokens_per_frame": (cfg.frame_px // 4) ** 2,
                   "markers_per_frame": units - (cfg.frame_px // 4) ** 2,
                   "distance_range": {b: [min(d), int(np.median(d)), max(d)] for b in BINS if (d := [q.distance for q in stream.questions if q.bin == b])}},
        "policies": runs,
    }
    metrics["targets"] = targets(runs, cfg, oracle)
    return StudyRecord(metrics, rows(runs), plot(runs), notes(metrics, cfg))


def _question_key(time: int, question: str) -> tuple[int, str]:
    return time, question


def chance_rate(questions: list[StreamQuestion]) -> float:
    """Accuracy of guessing uniformly among the answers the stream gives to questions of the same kind."""
    answers: dict[str, set] = {}
    for q in questions:
        answers.setdefault(q.kind, set()).add(q.answer)
    return float(np.mean([1 / len(answers[q.kind]) for q in questions])) if questions else float("nan")


def judge(ratio: metrics_lib.Interval | None, reference: metrics_lib.Interval | None, chance: float, n: int, bar: float) -> str:
    """Met / missed / not resolved for 'the policy keeps >= `bar` of the reference's accuracy on the same questions':
    not resolved with fewer than MIN_FAR_QUESTIONS questions, or when the reference itself is not clear of chance."""
    if ratio is None or reference is None or n < MIN_FAR_QUESTIONS or reference.low <= chance:
        return metrics_lib.NOT_RESOLVED
    return metrics_lib.verdict(ratio, bar)


def _paired(values: list[bool], reference: list[bool]) -> tuple[metrics_lib.Interval | None, metrics_lib.Interval | None]:
    """(ratio of the policy's accuracy to the reference's, the reference's accuracy), 95 % paired intervals."""
    if len(values) < 2:
        return None, None
    ref = metrics_lib.paired_bootstrap(metrics_lib.mean, reference)
    ratio = metrics_lib.paired_bootstrap(metrics_lib.ratio_of_means, values, reference) if any(reference) else None
    return ratio, ref


def targets(runs: dict[str, dict], cfg: StreamingConfig, oracle: list[tuple[StreamQuestion, bool]]) -> dict:
    """The issue's targets on this run's figures. Far-past accuracy is judged against two references on the same
    questions (paired 95 % bootstrap intervals): the full cache while it fits, and the oracle clip (the evidence
    frames and the latest ones); a reference whose own interval reaches down to chance gives no verdict."""
    out: dict = {}
    bounded = [n for n in runs if n != "full"]
    out["bounded_memory_flat"] = {n: runs[n]["resident_growth_after_warmup"] for n in bounded}
    out["bounded_attended_growth"] = {n: runs[n]["attended_growth"] for n in bounded}
    out["bounded_latency_growth"] = {
        n: runs[n]["latency_ms_median_by_quarter"][-1] / runs[n]["latency_ms_median_by_quarter"][0] for n in bounded
    }
    far_questions = [q for q, _ in oracle if q.bin == "far"]
    chance = chance_rate(far_questions)
    out["far_chance_rate"] = chance
    answers = {name: {_question_key(a["time"], a["question"]): a["correct"] for a in r["answers"] if a["bin"] == "far"}
               for name, r in runs.items()}
    smoke = cfg.preset == "smoke"
    if "full" in runs and "hierarchical" in runs:
        full, hier = runs["full"], runs["hierarchical"]
        horizon = full["frames_ingested"]
        keys = [k for k in answers["full"] if k[0] < horizon and k in answers["hierarchical"]]
        full_far = [answers["full"][k] for k in keys]
        hier_far = [answers["hierarchical"][k] for k in keys]
        ratio, ref = _paired(hier_far, full_far)
        at = min(horizon - 1, cfg.n_frames - 1)
        full_bytes = _at(full, at)
        hier_bytes = _at(hier, at)
        out["far_vs_full"] = {
            "frames_full_cache_holds": horizon,
            "full_far_accuracy": float(np.mean(full_far)) if full_far else None,
            "hierarchical_far_accuracy_same_questions": float(np.mean(hier_far)) if hier_far else None,
            "n_far_questions": len(full_far),
            "full_interval": ref and [ref.low, ref.high],
            "ratio_interval": ratio and [ratio.value, ratio.low, ratio.high],
            "verdict": None if smoke else judge(ratio, ref, chance, len(full_far), 0.8),
            "resident_ratio_full_over_hierarchical": full_bytes["resident"] / hier_bytes["resident"],
            "total_ratio_full_over_hierarchical": (full_bytes["resident"] + full_bytes["long_term"]) / (hier_bytes["resident"] + hier_bytes["long_term"]),
        }
    oracle_far = {_question_key(q.time, " ".join(q.question)): ok for q, ok in oracle if q.bin == "far"}
    vs_oracle = {}
    for name, got in answers.items():
        keys = [k for k in oracle_far if k in got]
        ratio, ref = _paired([got[k] for k in keys], [oracle_far[k] for k in keys])
        vs_oracle[name] = {"n": len(keys), "accuracy": float(np.mean([got[k] for k in keys])) if keys else None,
                           "oracle_accuracy": float(np.mean([oracle_far[k] for k in keys])) if keys else None,
                           "oracle_interval": ref and [ref.low, ref.high], "ratio_interval": ratio and [ratio.value, ratio.low, ratio.high],
                           "verdict": None if smoke else judge(ratio, ref, chance, len(keys), 0.8)}
    out["far_vs_oracle"] = vs_oracle
    far = {n: runs[n]["accuracy"]["far"]["accuracy"] for n in runs}
    out["far_accuracy_all_questions"] = far
    baselines = [n for n in ("window", "sinks+window") if n in answers and far.get(n) is not None]
    if "hierarchical" in answers and baselines:
        best = max(baselines, key=lambda n: far[n])
        keys = [k for k in answers["hierarchical"] if k in answers[best]]
        hier_vals, best_vals = [answers["hierarchical"][k] for k in keys], [answers[best][k] for k in keys]
        gap = metrics_lib.paired_bootstrap(metrics_lib.difference_of_means, hier_vals, best_vals) if len(keys) >= 2 else None
        out["hierarchical_over_windows"] = {
            "baseline": best, "n": len(keys), "difference_interval": gap and [gap.value, gap.low, gap.high],
            "verdict": None if smoke else (metrics_lib.NOT_RESOLVED if gap is None or len(keys) < MIN_FAR_QUESTIONS
                                           else metrics_lib.verdict(gap, 0.10)),
        }
    return out


def _at(run: dict, frame: int) -> dict:
    """Resident and long-term bytes at the last sample at or before `frame`."""
    s = run["series"]
    i = max(j for j, f in enumerate(s["frame"]) if f <= frame)
    return {"resident": s["resident"][i], "long_term": s["long_term"][i]}


def config_for(preset: str, **overrides) -> StreamingConfig:
    check_preset(preset)
    return replace(PRESETS[preset], **overrides)


def config_dict(cfg: StreamingConfig) -> dict:
    return asdict(cfg)
