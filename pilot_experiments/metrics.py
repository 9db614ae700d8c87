"""Measurements shared by the studies: quality, KV bytes, peak memory and latency.

Latency follows one rule everywhere: warm-up calls first, then several timed repeats, report the
median (and keep every sample). On CUDA, intervals are measured with CUDA events; on CPU with
`time.perf_counter`. Peak memory is the CUDA allocator's peak on GPU and the process's resident
set high-water mark (VmHWM, reset through /proc/self/clear_refs where Linux allows) on CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import torch

from pilot_experiments.kvcache import KVCache
from pilot_experiments.model import LVLM, SPECIAL_IDS, Inputs


class MetricsError(ValueError):
    """A measurement that cannot be made (no samples, zero baseline)."""


# ----------------------------------------------------------------------------- quality


def exact_match(predicted: Sequence[str], truth: Sequence[str]) -> float:
    return float(tuple(predicted) == tuple(truth))


def mean(values: Sequence[float]) -> float:
    if not values:
        raise MetricsError("no samples to average")
    return float(sum(values) / len(values))


def retention(score: float, baseline: float) -> float:
    """Quality kept relative to the uncompressed model (1.0 = no loss)."""
    if baseline <= 0:
        raise MetricsError(f"retention needs a positive baseline score, got {baseline}")
    return score / baseline


def agreement(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> float:
    """Share of outputs identical to the reference model's (e.g. the uncompressed model's)."""
    if len(outputs) != len(reference):
        raise MetricsError("outputs and reference differ in length")
    return mean([float(list(a) == list(b)) for a, b in zip(outputs, reference)])


# ----------------------------------------------------------------------------- intervals and verdicts

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
MET, MISSED, NOT_RESOLVED = "met", "missed", "not resolved"


@dataclass(frozen=True)
class Interval:
    """A statistic with its paired-bootstrap interval (`low`, `high` at `confidence`)."""

    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "confidence": self.confidence}


def paired_bootstrap(statistic: Callable[..., float], *samples: Sequence[float], resamples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> Interval:
    """`statistic(*samples)` with a percentile interval from resampling the items, the same items for every
    sample (they are paired: item i of each sample is the same question answered by different methods)."""
    count = len(samples[0])
    if count == 0 or any(len(s) != count for s in samples):
        raise MetricsError("paired samples must be non-empty and of equal length")
    data = torch.tensor([list(map(float, s)) for s in samples], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, count, (resamples, count), generator=generator)
    values = sorted(statistic(*(row[pick].tolist() for row in data)) for pick in picks)
    tail = (1 - CONFIDENCE) / 2
    low = values[int(tail * (resamples - 1))]
    high = values[int((1 - tail) * (resamples - 1))]
    return Interval(statistic(*samples), low, high)


def verdict(interval: Interval, bar: float, *, at_least: bool = True) -> str:
    """'met' when the whole interval clears `bar`, 'missed' when none of it does, else 'not resolved'."""
    low, high = (interval.low, interval.high) if at_least else (-interval.high, -interval.low)
    bar = bar if at_least else -bar
    if low >= bar:
        return MET
    if high < bar:
        return MISSED
    return NOT_RESOLVED


def all_of(verdicts: Sequence[str]) -> str:
    """One verdict for a target made of several conditions: missed if any is, met if all are, else not resolved."""
    if MISSED in verdicts:
        return MISSED
    return MET if verdicts and all(v == MET for v in verdicts) else NOT_RESOLVED


def ratio_of_sums(a: Sequence[float], b: Sequence[float]) -> float:
    """sum(a) / sum(b): e.g. a speedup, total reference time over total method time on the same items."""
    return float(sum(a) / sum(b)) if sum(b) > 0 else float("nan")


def ratio_of_means(a: Sequence[float], b: Sequence[float]) -> float:
    """mean(a) / mean(b): the retention of a method (a) against the full cache (b) over the same items."""
    return mean(a) / mean(b) if mean(b) > 0 else float("nan")


def difference_of_means(a: Sequence[float], b: Sequence[float]) -> float:
    return mean(a) - mean(b)


# ----------------------------------------------------------------------------- memory


def kv_bytes(cache: KVCache) -> dict[str, int]:
    """Logical bytes (valid entries at their precision), resident bytes (allocated KV tensors on the
    compute device), offloaded bytes and metadata bytes."""
    b = cache.bytes()
    return {"logical": b.logical, "resident": b.resident, "offloaded": b.offloaded, "metadata": b.metadata}


def _rss_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise MetricsError("VmHWM not found in /proc/self/status")


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise MetricsError("VmRSS not found in /proc/self/status")


@dataclass
class PeakMemory:
    """Context manager: `peak_bytes` (absolute peak) and `delta_bytes` (peak minus the usage at
    entry) of the CUDA allocator on GPU, or of the process RSS on CPU. On CPU, `exact` is False when
    the kernel did not let us reset the high-water mark (then the peak may predate the block)."""

    device: torch.device | str = "cpu"
    peak_bytes: int = 0
    delta_bytes: int = 0
    exact: bool = True
    _start: int = field(default=0, repr=False)

    def __enter__(self) -> Self:
        dev = torch.device(self.device)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            self._start = torch.cuda.memory_allocated(dev)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.exact = False
            self._start = _rss_now()
        return self

    def __exit__(self, *exc) -> None:
        dev = torch.device(self.device)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            self.peak_bytes = torch.cuda.max_memory_allocated(dev)
        else:
            self.peak_bytes = _rss_hwm()
        self.delta_bytes = max(0, self.peak_bytes - self._start)


# ----------------------------------------------------------------------------- time


@dataclass(frozen=True)
class Timing:
    median_s: float
    samples_s: tuple[float, ...]


class Clock:
    """Start/stop intervals: CUDA events on a GPU (`stop` waits for the work queued before it), perf_counter on a CPU."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, begun) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return begun.elapsed_time(end) / 1000.0
        return time.perf_counter() - begun


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", *, warmup: int = 2, repeats: int = 5) -> Timing:
    """Median wall time of `fn()` after `warmup` untimed calls."""
    if repeats < 1:
        raise MetricsError("need at least one timed repeat")
    clock = Clock(device)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        begun = clock.start()
        fn()
        samples.append(clock.stop(begun))
    return Timing(statistics.median(samples), tuple(samples))


@dataclass(frozen=True)
class GenerationTiming:
    """ttft_s: prefill + first token; tpot_s: per decode step; throughput: new tokens per second
    over the whole generation. Medians over repeats (TPOT over every step of every repeat)."""

    ttft_s: float
    tpot_s: float
    throughput_tok_s: float
    new_tokens: int
    repeats: int


@torch.no_grad()
def time_generation(
    model: LVLM, inputs: Inputs, new_tokens: int, *, warmup: int = 1, repeats: int = 3,
    after_prefill: Callable[[KVCache], None] | None = None,
) -> GenerationTiming:
    """Time greedy generation of exactly `new_tokens` tokens (eos is not honoured, so every repeat
    does the same work). `after_prefill(cache)` runs inside the TTFT interval (e.g. a compression
    policy), so its cost is charged to time-to-first-token."""
    device = inputs.embeds.device
    clock = Clock(device)
    ttfts, tpots, totals = [], [], []
    for r in range(warmup + repeats):
        cache = model.new_cache(inputs.embeds.shape[0], capacity=inputs.length + new_tokens)
        begun = clock.start()
        logits = model.prefill(inputs, cache).logits[:, -1]
        if after_prefill is not None:
            after_prefill(cache)
        token = logits.argmax(-1, keepdim=True)
        ttft = clock.stop(begun)
        steps = []
        for _ in range(new_tokens - 1):
            t0 = clock.start()
            token = model.decode(token, cache).logits[:, -1].argmax(-1, keepdim=True)
            steps.append(clock.stop(t0))
        if r >= warmup:
            ttfts.append(ttft)
            tpots += steps
            totals.append(ttft + sum(steps))
    tpot = statistics.median(tpots) if tpots else float("nan")
    return GenerationTiming(statistics.median(ttfts), tpot, new_tokens * inputs.embeds.shape[0] / statistics.median(totals), new_tokens, repeats)


def strip_eos(tokens: Sequence[int]) -> list[int]:
    """Tokens up to (not including) the first <eos>."""
    out = []
    for t in tokens:
        if t == SPECIAL_IDS["eos"]:
            break
        out.append(t)
    return out
