"""Goodput by binary search over arrival rate, and the search over topologies and GPU splits.

``goodput`` follows DistServe: the highest rate at which at least ``target`` (90 %) of requests meet
their SLO, bracketed by doubling or halving from a start rate and then bisected to a relative
tolerance. It assumes attainment falls as the rate rises; a ``Scenario`` makes that hold in practice by
drawing one set of unit-rate gaps and scaling it to every rate.

``search_topologies`` evaluates every GPU split of every architecture family for one scenario and ranks
them by goodput: the hardware-algorithm co-design step (HydraInfer / Vidur-search style).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pilot_experiments.roofline import Link

from .architectures import FAMILIES, Architecture, Family, candidates
from .costs import StageCostModel, image_patches
from .metrics import SLO, Prices, ServingMetrics, summarize_simulation
from .simulator import SchedulerConfig, SimulationResult, simulate
from .workloads import Request, Workload, generate

DEFAULT_SCHEDULER = SchedulerConfig()


class SearchError(Exception):
    """The goodput search cannot bracket the target (attainment never reaches it, or never drops)."""


@dataclass(frozen=True)
class GoodputResult:
    rate: float
    failing_rate: float | None
    evaluations: tuple[tuple[float, float], ...]


def goodput(attainment_at: Callable[[float], float], start_rate: float, target: float = 0.9,
            relative_tolerance: float = 0.05, max_doublings: int = 20) -> GoodputResult:
    """Highest rate whose attainment is >= ``target``; ``failing_rate`` is the lowest rate seen below it.

    Returns rate 0 when even ``start_rate / 2**max_doublings`` misses the target.
    """
    evaluations: list[tuple[float, float]] = []

    def meets(rate: float) -> bool:
        attainment = attainment_at(rate)
        evaluations.append((rate, attainment))
        return attainment >= target

    low, high = None, None
    rate = start_rate
    for _ in range(max_doublings + 1):
        if meets(rate):
            low = rate
            if high is not None:
                break
            rate *= 2
        else:
            high = rate
            if low is not None:
                break
            rate /= 2
    else:
        if low is None:
            return GoodputResult(0.0, high, tuple(evaluations))
        raise SearchError(f"attainment still >= {target} at {low:g} req/s; raise max_doublings or the load")
    while high - low > relative_tolerance * low:
        middle = (low + high) / 2
        if meets(middle):
            low = middle
        else:
            high = middle
    return GoodputResult(low, high, tuple(evaluations))


@dataclass(frozen=True)
class SLOPolicy:
    """Per-request SLOs scaled from the request's own latency on one idle GPU (DistServe's SLO scale)."""

    ttft_scale: float = 5.0
    tpot_scale: float = 5.0

    def slo(self, request: Request, costs: StageCostModel) -> SLO:
        ttft = costs.encode_seconds(image_patches(request), 1.0) + costs.llm_seconds([(request.prompt_tokens, 0)], [], 1.0)
        tpot = costs.llm_seconds([], [request.prompt_tokens + request.output_tokens // 2], 1.0)
        return SLO(self.ttft_scale * ttft, self.tpot_scale * tpot)


@dataclass(frozen=True)
class Scenario:
    """A workload served on a cost model and link, judged against an SLO policy and prices."""

    workload: Workload
    costs: StageCostModel
    link: Link | None
    prices: Prices
    requests: int
    slo_policy: SLOPolicy = SLOPolicy()
    seed: int = 0
    config: SchedulerConfig = DEFAULT_SCHEDULER
    _slo_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def slo_of(self, request: Request) -> SLO:
        key = (request.images, request.patches, request.prompt_tokens, request.output_tokens)
        if key not in self._slo_cache:
            self._slo_cache[key] = self.slo_policy.slo(request, self.costs)
        return self._slo_cache[key]

    def run(self, architecture: Architecture, rate: float) -> tuple[SimulationResult, ServingMetrics]:
        requests = generate(self.workload, rate, self.requests, self.seed)
        result = simulate(architecture, self.costs, requests, self.link, self.config)
        return result, summarize_simulation(result, self.slo_of, self.prices)

    def goodput(self, architecture: Architecture, start_rate: float, relative_tolerance: float = 0.05) -> GoodputResult:
        return goodput(lambda rate: self.run(architecture, rate)[1].slo_attainment, start_rate,
                       relative_tolerance=relative_tolerance)


@dataclass(frozen=True)
class Ranked:
    architecture: Architecture
    goodput: GoodputResult


def search_topologies(scenario: Scenario, gpus: int, start_rate: float, families: tuple[Family, ...] = FAMILIES,
                      relative_tolerance: float = 0.05, instance_sizes: tuple[int, ...] = (1, 2, 4),
                      on_candidate: Callable[[], None] = lambda: None) -> list[Ranked]:
    """Goodput of every candidate split of every family on ``gpus`` GPUs, best first."""
    ranked = []
    for family in families:
        for architecture in candidates(family, gpus, instance_sizes=instance_sizes):
            ranked.append(Ranked(architecture, scenario.goodput(architecture, start_rate, relative_tolerance)))
            on_candidate()
    return sorted(ranked, key=lambda entry: entry.goodput.rate, reverse=True)


def best_per_family(ranked: list[Ranked]) -> dict[str, Ranked]:
    """The highest-goodput split of each family in a ``search_topologies`` ranking."""
    best: dict[str, Ranked] = {}
    for entry in ranked:
        best.setdefault(entry.architecture.family, entry)
    return best
