"""Serving metrics of survey Table 5 (equations 7-9) computed from a simulation or a real run.

TTFT = t_first - t_arrival; TPOT = (t_end - t_first) / (No - 1), the mean gap between output tokens
after the first; a request meets its SLO when both its TTFT and its TPOT are within bounds. SLO
attainment is the fraction of requests meeting it; ``slo_throughput`` the number of such requests per
second of serving (Table 5's goodput formula); the goodput *rate* -- the highest arrival rate at which
at least 90 % of requests meet the SLO -- is found by ``search.goodput``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SLO:
    ttft_s: float
    tpot_s: float


@dataclass(frozen=True)
class Prices:
    """What a GPU costs: USD per GPU-hour, board power, and the power drawn while idle as a TDP fraction."""

    usd_per_gpu_hour: float
    tdp_w: float
    idle_power_fraction: float = 0.3


@dataclass(frozen=True)
class ServingMetrics:
    requests: int
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    tpot_p99_s: float
    e2e_mean_s: float
    e2e_p99_s: float
    slo_attainment: float
    slo_throughput_rps: float
    throughput_rps: float
    output_tokens_per_s: float
    cost_per_successful_request_usd: float | None
    energy_per_token_j: float

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of a non-empty sequence."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def meets_slo(ttft: float, tpot: float, slo: SLO) -> bool:
    return ttft <= slo.ttft_s and tpot <= slo.tpot_s


def summarize(
    ttfts: Sequence[float],
    tpots: Sequence[float],
    e2es: Sequence[float],
    output_tokens: int,
    duration_s: float,
    slos: Sequence[SLO],
    gpus: int,
    busy_gpu_seconds: float,
    prices: Prices,
) -> ServingMetrics:
    """Metrics of one run (``slos[i]`` is request i's SLO); energy counts TDP while busy and
    ``idle_power_fraction * TDP`` otherwise."""
    count = len(ttfts)
    successes = sum(meets_slo(ttft, tpot, slo) for ttft, tpot, slo in zip(ttfts, tpots, slos, strict=True))
    gpu_seconds = gpus * duration_s
    cost = prices.usd_per_gpu_hour * gpu_seconds / 3600
    idle = max(0.0, gpu_seconds - busy_gpu_seconds)
    energy = prices.tdp_w * (busy_gpu_seconds + prices.idle_power_fraction * idle)
    return ServingMetrics(
        requests=count,
        ttft_mean_s=statistics.fmean(ttfts),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        tpot_mean_s=statistics.fmean(tpots),
        tpot_p99_s=percentile(tpots, 99),
        e2e_mean_s=statistics.fmean(e2es),
        e2e_p99_s=percentile(e2es, 99),
        slo_attainment=successes / count,
        slo_throughput_rps=successes / duration_s,
        throughput_rps=count / duration_s,
        output_tokens_per_s=output_tokens / duration_s,
        cost_per_successful_request_usd=cost / successes if successes else None,
        energy_per_token_j=energy / output_tokens,
    )


def summarize_simulation(result, slo_of, prices: Prices) -> ServingMetrics:
    """``summarize`` for a ``simulator.SimulationResult``; ``slo_of(request)`` gives each request's SLO."""
    records = result.records
    return summarize(
        [r.ttft for r in records],
        [r.tpot for r in records],
        [r.e2e for r in records],
        sum(r.request.output_tokens for r in records),
        result.makespan_s,
        [slo_of(r.request) for r in records],
        result.gpus,
        result.busy_gpu_seconds,
        prices,
    )
