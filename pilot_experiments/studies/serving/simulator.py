"""Discrete-event simulation (SimPy) of an LVLM serving architecture on a request trace.

Every instance of every pool is a SimPy process with a FIFO inbox. A request flows through the stages
its architecture gives it; between instances on different GPUs it pays a transfer of its embeddings
(after encode) or its KV cache (after prefill) over the configured link. Scheduling per role:

* ``E``  -- batches whole requests up to ``encode_image_budget`` images;
* ``P``  -- batches whole prompts up to ``prefill_token_budget`` tokens; the first token is produced here;
* ``D``  -- continuous batching: before every step it admits waiting requests whose prompt plus output
            fit in the free KV memory (reserved until the request finishes), up to ``max_decode_batch``;
* ``EP`` -- encodes then prefills the same batch in one go;
* ``PD``, ``EPD`` -- one worker interleaving both: a prefill iteration (with the encode first for
            ``EPD``) whenever new requests wait and fit, else a decode step (vLLM's prefill priority);
            with ``chunked_prefill`` every iteration is a decode step for all running requests plus up to
            ``prefill_token_budget`` prompt tokens (Sarathi-style).

A single request on an idle system therefore takes exactly the sum of its stage costs and transfers.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from pilot_experiments.roofline import Link

from .architectures import Architecture, Role
from .costs import CostModelError, StageCostModel, image_patches
from .workloads import Request


@dataclass(frozen=True)
class SchedulerConfig:
    prefill_token_budget: int = 16384
    encode_image_budget: int = 64
    max_decode_batch: int = 256
    chunked_prefill: bool = False


@dataclass
class RequestRecord:
    request: Request
    encode_done_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None

    @property
    def ttft(self) -> float:
        return self.first_token_s - self.request.arrival_s

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first (0 for single-token answers)."""
        later = self.request.output_tokens - 1
        return (self.finish_s - self.first_token_s) / later if later else 0.0

    @property
    def e2e(self) -> float:
        return self.finish_s - self.request.arrival_s


@dataclass
class SimulationResult:
    architecture: str
    family: str
    cost_source: str
    gpus: int
    records: list[RequestRecord]
    makespan_s: float
    busy_gpu_seconds: float


@dataclass
class _Job:
    record: RequestRecord
    generated: int = 0
    prefilled: int = 0
    encoded: bool = False

    @property
    def request(self) -> Request:
        return self.record.request

    @property
    def reserved_tokens(self) -> int:
        return self.request.prompt_tokens + self.request.output_tokens

    @property
    def context(self) -> int:
        return self.request.prompt_tokens + self.generated - 1


@dataclass
class _Instance:
    sim: Simulation
    role: Role
    gpus: float
    inbox: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    reserved: int = 0
    busy: bool = False
    busy_gpu_seconds: float = 0.0
    sibling: _Instance | None = None

    def __post_init__(self) -> None:
        self.wakeup = self.sim.env.event()
        hosts_llm = any(stage in self.role for stage in "PD")
        self.kv_capacity = (
            self.sim.costs.kv_capacity_tokens(self.gpus, hosts_vision="E" in self.role) if hosts_llm else 0.0
        )

    def submit(self, job: _Job) -> None:
        self.inbox.append(job)
        if not self.wakeup.triggered:
            self.wakeup.succeed()

    @property
    def load(self) -> float:
        return len(self.inbox) + len(self.running) + (1 if self.busy else 0)

    def share(self) -> float:
        """GPUs this instance may use now: its own, or under SM multiplexing its share of one GPU
        (the whole GPU when the share is adaptive and the sibling worker is idle)."""
        arch = self.sim.architecture
        if self.sibling is None:
            return self.gpus
        if arch.adaptive_share and not self.sibling.busy:
            return 1.0
        return arch.encode_share if self.role == "E" else 1 - arch.encode_share

    def work(self, cost: Callable[[float], float]):
        """Hold this instance for ``cost(gpus)`` seconds, the share of GPUs fixed when the work starts."""
        gpus = self.share()
        seconds = cost(gpus)
        self.busy = True
        yield self.sim.env.timeout(seconds)
        self.busy = False
        self.busy_gpu_seconds += seconds * gpus

    def wait(self):
        if not self.inbox and not self.running:
            self.wakeup = self.sim.env.event()
            yield self.wakeup

    # -- stage loops ------------------------------------------------------------------------------

    def run(self):
        loop = {"E": self._encode_loop, "P": self._prefill_loop, "EP": self._prefill_loop,
                "D": self._llm_loop, "PD": self._llm_loop, "EPD": self._llm_loop}[self.role]
        yield from loop()

    def _take(self, limit: int, size) -> list[_Job]:
        """FIFO batch from the inbox: at least one job, more while their summed ``size`` fits ``limit``."""
        batch, used = [], 0
        while self.inbox and (not batch or used + size(self.inbox[0]) <= limit):
            used += size(self.inbox[0])
            batch.append(self.inbox.popleft())
        return batch

    def _encoded(self, batch: list[_Job]) -> None:
        if "E" not in self.role:
            return
        for job in batch:
            if not job.encoded:
                job.encoded = True
                job.record.encode_done_s = self.sim.env.now

    def _encode_loop(self):
        costs = self.sim.costs
        while True:
            yield from self.wait()
            batch = self._take(self.sim.config.encode_image_budget, lambda job: job.request.images)
            patches = [p for job in batch for p in image_patches(job.request)]
            yield from self.work(functools.partial(costs.encode_seconds, patches))
            self._encoded(batch)
            for job in batch:
                self.sim.forward(job, self)

    def _prefill_loop(self):
        while True:
            yield from self.wait()
            batch = self._take(self.sim.config.prefill_token_budget, lambda job: job.request.prompt_tokens)
            yield from self.work(functools.partial(self._prefill_seconds, batch))
            self._encoded(batch)
            for job in batch:
                self._first_token(job)
                if job.record.finish_s is None:
                    self.sim.forward(job, self)

    def _prefill_seconds(self, batch: list[_Job], gpus: float) -> float:
        """Whole-prompt prefill of ``batch``, preceded by its encode when this instance also encodes."""
        costs = self.sim.costs
        seconds = costs.llm_seconds([(job.request.prompt_tokens, 0) for job in batch], [], gpus)
        if "E" in self.role:
            seconds += costs.encode_seconds([p for job in batch for p in image_patches(job.request)], gpus)
        return seconds

    def _first_token(self, job: _Job) -> None:
        job.prefilled = job.request.prompt_tokens
        job.generated = 1
        job.record.first_token_s = self.sim.env.now
        if job.request.output_tokens == 1:
            job.record.finish_s = self.sim.env.now

    def _admit(self, prompt_token_budget: float = float("inf")) -> list[_Job]:
        """Move inbox jobs to ``running`` in FIFO order while their prompt + output fits the free KV memory,
        the batch cap holds and their prompts fit ``prompt_token_budget`` (the first always does)."""
        admitted, tokens = [], 0
        while self.inbox and len(self.running) < self.sim.config.max_decode_batch:
            job = self.inbox[0]
            if self.reserved + job.reserved_tokens > self.kv_capacity:
                break
            if admitted and tokens + job.request.prompt_tokens > prompt_token_budget:
                break
            self.inbox.popleft()
            self.reserved += job.reserved_tokens
            self.running.append(job)
            admitted.append(job)
            tokens += job.request.prompt_tokens
        return admitted

    def _llm_loop(self):
        while True:
            yield from self.wait()
            if self.inbox and not self.running and self.inbox[0].reserved_tokens > self.kv_capacity:
                raise CostModelError(
                    f"a request of {self.inbox[0].reserved_tokens} tokens never fits the KV memory of a "
                    f"{self.role} instance ({self.kv_capacity:.0f} tokens); give instances more GPUs or memory"
                )
            if self.role != "D" and not self.sim.config.chunked_prefill:
                yield from self._prefill_priority_iteration()
            else:
                yield from self._mixed_iteration()
            for job in [job for job in self.running if job.generated >= job.request.output_tokens]:
                self.running.remove(job)
                self.reserved -= job.reserved_tokens
                if job.record.finish_s is None:
                    job.record.finish_s = self.sim.env.now

    def _prefill_priority_iteration(self):
        """vLLM's default: prefill (and encode) newly admitted requests if any, else one decode step."""
        costs = self.sim.costs
        batch = self._admit(self.sim.config.prefill_token_budget)
        if batch:
            yield from self.work(lambda gpus: self._prefill_seconds(batch, gpus))
            self._encoded(batch)
            for job in batch:
                self._first_token(job)
            return
        decoding = list(self.running)
        yield from self.work(lambda gpus: costs.llm_seconds([], [job.context for job in decoding], gpus))
        for job in decoding:
            job.generated += 1

    def _mixed_iteration(self):
        """One step for every decoding request plus (non-D roles) up to the token budget of prompt chunks."""
        costs = self.sim.costs
        self._admit()
        decoding = [job for job in self.running if job.prefilled == job.request.prompt_tokens]
        chunks, budget = [], self.sim.config.prefill_token_budget - len(decoding)
        for job in self.running:
            if job.prefilled < job.request.prompt_tokens and budget > 0:
                new = min(budget, job.request.prompt_tokens - job.prefilled)
                chunks.append((job, new))
                budget -= new
        if not decoding and not chunks:
            raise CostModelError(f"{self.role} instance stalled: nothing to run yet {len(self.inbox)} requests wait")
        unencoded = [job for job, _ in chunks if "E" in self.role and not job.encoded]
        patches = [p for job in unencoded for p in image_patches(job.request)]

        def seconds(gpus: float) -> float:
            llm = costs.llm_seconds([(new, job.prefilled) for job, new in chunks], [job.context for job in decoding], gpus)
            return llm + costs.encode_seconds(patches, gpus)

        yield from self.work(seconds)
        self._encoded(unencoded)
        for job in decoding:
            job.generated += 1
        for job, new in chunks:
            job.prefilled += new
            if job.prefilled == job.request.prompt_tokens:
                self._first_token(job)


class Simulation:
    """Build the instances of ``architecture`` and replay ``requests`` through them."""

    def __init__(self, architecture: Architecture, costs: StageCostModel, requests: list[Request],
                 link: Link | None, config: SchedulerConfig = SchedulerConfig()):
        self.env = simpy.Environment()
        self.architecture, self.costs, self.link, self.config = architecture, costs, link, config
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.pools: dict[Role, list[_Instance]] = {}
        for pool in architecture.pools:
            self.pools[pool.role] = [
                _Instance(self, pool.role, pool.gpus_per_instance) for _ in range(pool.instances)
            ]
        if architecture.family == "sm-multiplexed":
            for encoder, llm in zip(self.pools["E"], self.pools["PD"]):
                encoder.sibling, llm.sibling = llm, encoder
        self.records: list[RequestRecord] = []

    def _stages(self, request: Request) -> list[Role]:
        roles = [pool.role for pool in self.architecture.pools]
        if request.modality == "text" and self.architecture.text_bypasses_encode:
            roles = [role for role in roles if role != "E"]
        return roles

    def _choose(self, role: Role) -> _Instance:
        instances = self.pools[role]
        if role == "D":
            return min(instances, key=lambda inst: (inst.reserved + sum(j.reserved_tokens for j in inst.inbox), inst.load))
        return min(instances, key=lambda inst: inst.load + (inst.sibling.load if inst.sibling else 0))

    def forward(self, job: _Job, source: _Instance | None) -> None:
        """Send ``job`` to the next stage of its route, paying the transfer if it changes GPU."""
        stages = self._stages(job.request)
        position = stages.index(source.role) + 1 if source is not None else 0
        role = stages[position]
        if source is not None and source.sibling is not None and role == "PD":
            target, num_bytes = source.sibling, 0.0
        else:
            target = self._choose(role)
            num_bytes = 0.0
            if source is not None:
                num_bytes = self.costs.embedding_bytes(job.request) if source.role == "E" else self.costs.kv_bytes(job.request.prompt_tokens)
        if num_bytes and self.link is not None:
            self.env.process(self._deliver(target, job, self.link.transfer_seconds(num_bytes)))
        else:
            target.submit(job)

    def _deliver(self, target: _Instance, job: _Job, seconds: float):
        yield self.env.timeout(seconds)
        target.submit(job)

    def _arrivals(self):
        for request in self.requests:
            yield self.env.timeout(max(0.0, request.arrival_s - self.env.now))
            record = RequestRecord(request)
            self.records.append(record)
            self.forward(_Job(record), None)

    def run(self) -> SimulationResult:
        for instances in self.pools.values():
            for instance in instances:
                self.env.process(instance.run())
        self.env.process(self._arrivals())
        self.env.run()
        unfinished = [record for record in self.records if record.finish_s is None]
        if unfinished or len(self.records) != len(self.requests):
            raise CostModelError(f"{len(unfinished)} requests never finished under {self.architecture.name}")
        start = self.requests[0].arrival_s if self.requests else 0.0
        makespan = max((record.finish_s for record in self.records), default=start) - start
        busy = sum(inst.busy_gpu_seconds for instances in self.pools.values() for inst in instances)
        return SimulationResult(self.architecture.name, self.architecture.family, self.costs.source,
                                self.architecture.gpus, self.records, makespan, busy)


def simulate(architecture: Architecture, costs: StageCostModel, requests: list[Request], link: Link | None,
             config: SchedulerConfig = SchedulerConfig()) -> SimulationResult:
    """Run one simulation to completion; every request finishes (no drops)."""
    return Simulation(architecture, costs, requests, link, config).run()
