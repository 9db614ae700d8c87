"""The hybrid-kv study's records: its configuration, one decoded answer, and the tally per method and budget.

Plain data shared by `study` (which fills them) and `report` (which turns them into the results record), so
neither module imports the other's caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("FullCache", "LookM", "MadaKV", "SparseMM", "Hybrid")
# How the cache meets the question. question-agnostic (the primary setting, as kvpress measures): the context is
# prefilled and compressed before the question is seen, scored with the attention of the context's own last entries;
# question-aware: compressed after the question is prefilled, scored with the question's attention; multi-turn: two
# questions in turn on one question-agnostic compressed cache, the second one scored.
PROTOCOLS = ("question-agnostic", "question-aware", "multi-turn")


@dataclass(frozen=True)
class HybridKVConfig:
    """One run of the study. Episodes come from the test split; SparseMM calibrates on val."""

    preset: str
    size: str = "target"
    image_episodes: int = 20  # about 15 questions each
    multi_episodes: int = 20
    video_episodes: int = 60
    calibration_episodes: int = 40
    budgets: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1)
    methods: tuple[str, ...] = METHODS
    protocols: tuple[str, ...] = PROTOCOLS  # the first is the one the targets are judged on
    context_window: int = 16  # question-agnostic: the context's last entries whose attention scores the cache
    chunk: int = 16  # a patch row of a 64-px image; mean keys then cost 1/32 of a dynamic head's visual KV
    dynamic_fraction: float = 0.5
    latency_frames: int = 24
    latency_tokens: int = 24
    latency_repeats: int = 5  # timed rounds, after one warm-up round, methods interleaved
    seed: int = 0
    split: str = "test"  # evaluation split; SparseMM always calibrates on "val"
    model: str | None = None  # a local Qwen2.5-VL checkpoint directory instead of the trained reference LVLM
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1  # CPU threads: other jobs share this machine's cores, and spinning OpenMP workers then stall


@dataclass
class Answer:
    tokens: list[int]
    step_s: list[float]
    compress_s: float
    bytes: dict[str, int]
    visual_kept: float
    total_kept: float
    moved_per_step: float = 0.0  # bytes copied back from the offload store per decode step


@dataclass
class Tally:
    """Per (method, budget): scores per task kind and set, and the cost measurements."""

    scores: dict[str, list[float]] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)
    compress_ms: list[float] = field(default_factory=list)
    bytes: dict[str, list[int]] = field(default_factory=dict)
    visual_kept: list[float] = field(default_factory=list)
    total_kept: list[float] = field(default_factory=list)
    moved_per_step: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)  # answer tokens, in item order

    def add(self, family: str, kind: str, value: float, ans: Answer) -> None:
        self.outputs.append(ans.tokens)
        for key in (f"kind:{kind}", f"set:{'video' if family == 'video' else 'image'}"):
            self.scores.setdefault(key, []).append(value)
        self.step_ms += [s * 1e3 for s in ans.step_s]
        self.compress_ms.append(ans.compress_s * 1e3)
        for k, v in ans.bytes.items():
            self.bytes.setdefault(k, []).append(v)
        self.visual_kept.append(ans.visual_kept)
        self.total_kept.append(ans.total_kept)
        self.moved_per_step.append(ans.moved_per_step)
