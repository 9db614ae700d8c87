"""An unbounded SynthVis video stream with questions about its near, middle and far past.

Each of the five shapes lives several short lives (it appears with a random colour, moves, and
vanishes), separated by gaps whose lengths are spread log-uniformly, so that at any moment some
shapes were last seen a few frames ago and others hundreds or thousands of frames ago. Questions
use the templates the reference LVLM was trained on (synthvis's temporal questions):

- "what colour was the X before it vanished ?": the colour of X in the last frame it was visible;
  its distance is the number of frames since then (binned near / middle / far);
- "which shape appeared first , the X or the Y ?": needs both shapes' first (and only) appearances,
  both older than the near bin: the two-event questions.

SynthVis's own `video_questions` cannot be used as is: it assumes one life per shape and asks at
the end of a short clip, while a stream needs many lives and questions asked at chosen times.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from pilot_experiments import synthvis

BINS = ("near", "middle", "far", "two-event")


class StreamError(ValueError):
    """A stream that cannot be built as asked (too short, impossible distance bins)."""


@dataclass(frozen=True)
class StreamQuestion:
    """A question asked right after frame `time` was ingested. `evidence` are the frames that hold
    the answer; `distance` is `time` minus the oldest of them."""

    time: int
    kind: str
    question: tuple[str, ...]
    answer: tuple[str, ...]
    evidence: tuple[int, ...]
    distance: int
    bin: str


@dataclass(frozen=True)
class StreamSpec:
    """Knobs of the world and of the question schedule (frames are the unit of every length)."""

    n_frames: int
    frame_px: int = 32
    patch_px: int = 4
    life: tuple[int, int] = (3, 12)
    gap: tuple[int, int] = (4, 1500)
    near_max: int = 6
    middle_max: int = 120
    questions_per_bin: int = 12
    spans: tuple[int, ...] = ()  # frames where a new question span starts; each span gets its own quota

    def __post_init__(self) -> None:
        if self.n_frames < 50:
            raise StreamError(f"a stream needs at least 50 frames, not {self.n_frames}")
        if not 0 < self.near_max < self.middle_max < self.n_frames:
            raise StreamError(f"need 0 < near_max ({self.near_max}) < middle_max ({self.middle_max}) < n_frames ({self.n_frames})")
        if not 1 <= self.life[0] <= self.life[1] or not 1 <= self.gap[0] <= self.gap[1]:
            raise StreamError(f"life {self.life} and gap {self.gap} must be (min, max) ranges of positive frame counts")
        if list(self.spans) != sorted(set(self.spans)) or any(not 0 < s < self.n_frames for s in self.spans):
            raise StreamError(f"spans {self.spans} must be increasing frame indices inside the stream")
        if self.frame_px % self.patch_px:
            raise StreamError(f"frame_px {self.frame_px} must be a multiple of patch_px {self.patch_px}")


@dataclass(frozen=True)
class FrameStream:
    """The video (rendered frame by frame on demand) and its questions, sorted by time."""

    spec: StreamSpec
    video: synthvis.Video
    questions: tuple[StreamQuestion, ...]

    @property
    def n_frames(self) -> int:
        return self.video.n_frames

    def pixels(self, frame: int) -> torch.Tensor:
        """(3, H, W) float in [0, 1]."""
        return torch.from_numpy(synthvis.render(self.video.scene(frame), self.spec.patch_px)).float().div_(255.0)

    def questions_at(self, frame: int) -> list[StreamQuestion]:
        return [q for q in self.questions if q.time == frame]

    def lives(self, shape: str) -> list[synthvis.Track]:
        return [t for t in self.video.tracks if t.shape == shape]


def evidence_lives(stream: FrameStream, q: StreamQuestion) -> list[synthvis.Track]:
    """The object lives a question's answer rests on: the asked shape's last life before the
    question (vanish-colour), or both shapes' first lives (first)."""
    if q.kind == "vanish-colour":
        return [t for t in stream.lives(q.question[4]) if t.vanish - 1 == q.evidence[0]]
    return [stream.lives(q.question[6])[0], stream.lives(q.question[9])[0]]


def evidence_held(stream: FrameStream, q: StreamQuestion, frame: torch.Tensor, patch: torch.Tensor) -> bool:
    """Whether cache slots (frame, patch) (n,) show every life the answer rests on: some visual
    entry of a frame of that life within one patch of the object (one patch of slack lets a
    pooled 2x2 entry, filed under its block's corner, count)."""
    held = set(zip(frame.tolist(), patch.tolist()))
    grid = stream.video.grid
    for life in evidence_lives(stream, q):
        side = synthvis.SIZES[life.size]
        found = False
        for f in range(life.appear, life.vanish):
            row, col = life.place_at(f, grid)
            rows = range(max(0, row - 1), min(grid, row + side + 1))
            cols = range(max(0, col - 1), min(grid, col + side + 1))
            if any((f, r * grid + c) in held for r in rows for c in cols):
                found = True
                break
        if not found:
            return False
    return True


def _tracks(rng: np.random.Generator, spec: StreamSpec, grid: int) -> list[synthvis.Track]:
    tracks: list[synthvis.Track] = []
    lo, hi = np.log(spec.gap[0]), np.log(spec.gap[1])
    for shape in synthvis.SHAPES:
        start = int(rng.integers(0, max(1, spec.n_frames // 8)))
        while start < spec.n_frames - 1:
            vanish = min(start + int(rng.integers(spec.life[0], spec.life[1] + 1)), spec.n_frames)
            size = str(rng.choice(list(synthvis.SIZES)))
            span = grid - synthvis.SIZES[size]
            tracks.append(
                synthvis.Track(
                    len(tracks), shape, str(rng.choice(list(synthvis.COLOURS))), None, None, size, str(rng.choice(synthvis.TEXTURES)),
                    start, vanish, int(rng.integers(0, span + 1)), int(rng.integers(0, span + 1)),
                    int(rng.integers(-1, 2)), int(rng.integers(-1, 2)), int(rng.integers(1, 4)),
                )
            )
            start = vanish + int(np.exp(rng.uniform(lo, hi)))
    return sorted(tracks, key=lambda t: t.appear)


def _bin(distance: int, spec: StreamSpec) -> str:
    return "near" if distance <= spec.near_max else "middle" if distance <= spec.middle_max else "far"


def _candidates(video: synthvis.Video, spec: StreamSpec, time: int) -> list[StreamQuestion]:
    """Every question that is well defined right after frame `time`."""
    out = []
    past = {s: [t for t in video.tracks if t.shape == s and t.appear <= time] for s in synthvis.SHAPES}
    for shape, lives in past.items():
        if not lives or lives[-1].vanish > time:  # never seen, or visible now
            continue
        last = lives[-1].vanish - 1
        q = ("what", "colour", "was", "the", shape, "before", "it", "vanished", "?")
        out.append(StreamQuestion(time, "vanish-colour", q, (lives[-1].colour,), (last,), time - last, _bin(time - last, spec)))
    once = [lives[0] for lives in past.values() if len(lives) == 1 and lives[0].vanish <= time - spec.near_max]
    for i, a in enumerate(once):
        for b in once[i + 1 :]:
            first = a if a.appear < b.appear else b
            q = ("which", "shape", "appeared", "first", ",", "the", a.shape, "or", "the", b.shape, "?")
            evidence = tuple(sorted((a.appear, b.appear)))
            out.append(StreamQuestion(time, "first", q, (first.shape,), evidence, time - evidence[0], "two-event"))
    return out


def _diverse(questions: list[StreamQuestion], n: int, rng: np.random.Generator) -> list[StreamQuestion]:
    """Up to `n` questions, taken round-robin over the distinct (question, evidence) groups in
    random order, so that one long-absent shape does not supply every far question."""
    groups: dict[tuple, list[StreamQuestion]] = {}
    for q in questions:
        groups.setdefault((q.question, q.evidence), []).append(q)
    queues = [list(rng.permutation(len(g))) for g in groups.values()]
    members = list(groups.values())
    order = rng.permutation(len(members))
    out: list[StreamQuestion] = []
    while len(out) < n and any(queues):
        for i in order:
            if queues[i] and len(out) < n:
                out.append(members[i][queues[i].pop()])
    return out


def build_stream(spec: StreamSpec, seed: int, split: str = "test") -> FrameStream:
    """A seeded stream; splits are disjoint by seed as in synthvis. Questions are drawn at random
    times, then balanced so that each bin holds at most `questions_per_bin` of them in each span
    of the stream (so a span can match, say, the length the full cache can hold)."""
    if split not in synthvis.SPLITS:
        raise StreamError(f"unknown split {split!r}; use one of {list(synthvis.SPLITS)}")
    rng = np.random.default_rng([synthvis.SPLITS[split], seed, 7])
    grid = spec.frame_px // spec.patch_px
    video = synthvis.Video(grid, spec.n_frames, tuple(_tracks(rng, spec, grid)))
    times = np.sort(rng.choice(np.arange(spec.near_max, spec.n_frames), size=min(400, spec.n_frames - spec.near_max), replace=False))
    bounds = [0, *spec.spans, spec.n_frames]
    chosen = []
    for lo, hi in itertools.pairwise(bounds):
        pool: dict[str, list[StreamQuestion]] = {b: [] for b in BINS}
        for t in times[(times >= lo) & (times < hi)]:
            for q in _candidates(video, spec, int(t)):
                pool[q.bin].append(q)
        for b in BINS:
            chosen += _diverse(pool[b], spec.questions_per_bin, rng)
    return FrameStream(spec, video, tuple(sorted(chosen, key=lambda q: (q.time, q.bin, q.question))))
