"""The serving simulator: stage-cost accounting, scheduling limits, metrics and goodput search."""

import dataclasses
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilot_experiments.roofline import Link, load_hardware, load_models
from pilot_experiments.studies.serving import architectures as arch
from pilot_experiments.studies.serving.costs import CostModelError, RooflineCosts
from pilot_experiments.studies.serving.metrics import SLO, Prices, percentile, summarize
from pilot_experiments.studies.serving.search import Scenario, SLOPolicy, goodput
from pilot_experiments.studies.serving.simulator import SchedulerConfig, simulate
from pilot_experiments.studies.serving.workloads import (
    Request,
    RequestClass,
    Workload,
    WorkloadError,
    generate,
    read_trace,
    unit_rate_gaps,
    write_trace,
)

GPU = load_hardware().gpu("H100-SXM5-80GB")
LINK = Link(name="test-link", bandwidth_gbs=10.0, latency_us=100.0)
COSTS = RooflineCosts(load_models().model("Qwen2.5-VL-7B"), GPU)
PRICES = Prices(usd_per_gpu_hour=3.0, tdp_w=700)
IMAGE = Request(arrival_s=1.0, modality="image", images=2, patches=2048, visual_tokens=512, text_tokens=40,
                output_tokens=6)


def decode_seconds(request: Request, gpus: float = 1.0) -> float:
    """Decode steps after the first token: step k sees a context of prompt + k - 1 tokens."""
    return sum(COSTS.llm_seconds([], [request.prompt_tokens + k], gpus) for k in range(request.output_tokens - 1))


def encode(request: Request, gpus: float = 1.0) -> float:
    return COSTS.encode_seconds([request.patches // request.images] * request.images, gpus)


def prefill(request: Request, gpus: float = 1.0) -> float:
    return COSTS.llm_seconds([(request.prompt_tokens, 0)], [], gpus)


DEFAULT_SCHEDULER = SchedulerConfig()


def run_one(architecture, request=IMAGE, link=LINK, config=DEFAULT_SCHEDULER):
    (record,) = simulate(architecture, COSTS, [request], link, config).records
    return record


@pytest.mark.parametrize(
    ("architecture", "transfers"),
    [
        (arch.monolithic(2), 0),
        (arch.e_p_d(1, 1, 1), 2),
        (arch.ep_d(1, 1), 1),
        (arch.e_pd(1, 1), 1),
        (arch.modality(1, 1), 1),
    ],
)
def test_single_request_latency_is_the_sum_of_its_stage_costs_and_transfers(architecture, transfers):
    record = run_one(architecture)
    embeddings = LINK.transfer_seconds(COSTS.embedding_bytes(IMAGE))
    kv = LINK.transfer_seconds(COSTS.kv_bytes(IMAGE.prompt_tokens))
    embedding_hop = embeddings if architecture.family in ("E|P|D", "E|PD", "modality") else 0.0
    kv_hop = kv if architecture.family in ("E|P|D", "EP|D") else 0.0
    assert (embedding_hop > 0) + (kv_hop > 0) == transfers
    assert record.ttft == pytest.approx(encode(IMAGE) + embedding_hop + prefill(IMAGE), rel=1e-12)
    assert record.e2e == pytest.approx(record.ttft + kv_hop + decode_seconds(IMAGE), rel=1e-12)


def test_sm_multiplexing_runs_each_stage_on_its_share_of_the_gpu():
    fixed = run_one(arch.sm_multiplexed(1, encode_share=0.25))
    assert fixed.ttft == pytest.approx(encode(IMAGE, 0.25) + prefill(IMAGE, 0.75), rel=1e-12)
    assert fixed.e2e - fixed.ttft == pytest.approx(decode_seconds(IMAGE, 0.75), rel=1e-12)
    # Adaptive shares give an idle sibling's compute away: alone, a request runs on the whole GPU.
    adaptive = run_one(arch.sm_multiplexed(1, encode_share=0.25, adaptive=True))
    assert adaptive.e2e == pytest.approx(run_one(arch.monolithic(1)).e2e, rel=1e-12)


def test_tensor_parallel_instances_are_faster_but_not_linearly():
    single = run_one(arch.e_p_d(1, 1, 1))
    parallel = run_one(arch.e_p_d(2, 2, 1, encode_tp=2, prefill_tp=2))
    assert single.ttft / 2 < parallel.ttft < single.ttft


def test_chunked_prefill_splits_a_prompt_into_budget_sized_iterations():
    budget = 200
    record = run_one(arch.monolithic(1), config=SchedulerConfig(prefill_token_budget=budget, chunked_prefill=True))
    chunks = [(min(budget, IMAGE.prompt_tokens - done), done) for done in range(0, IMAGE.prompt_tokens, budget)]
    expected = encode(IMAGE) + sum(COSTS.llm_seconds([chunk], [], 1.0) for chunk in chunks)
    assert record.ttft == pytest.approx(expected, rel=1e-12)


def test_text_requests_skip_the_encoder_only_where_the_architecture_routes_by_modality():
    """A text request arriving just behind an image: E|PD queues it behind the image's encode."""
    image = IMAGE.model_copy(update={"arrival_s": 0.0})
    text = Request(arrival_s=1e-6, modality="text", text_tokens=300, output_tokens=3)
    _, bypass = simulate(arch.modality(1, 1), COSTS, [image, text], LINK).records
    _, queued = simulate(arch.e_pd(1, 1), COSTS, [image, text], LINK).records
    assert bypass.encode_done_s is None
    assert bypass.ttft == pytest.approx(prefill(text), rel=1e-9)
    assert queued.ttft >= encode(image) - 1e-6 + bypass.ttft


def test_kv_memory_limit_serialises_decoding():
    """With room for one request's KV only, the second request waits for the first to finish."""
    capacity = IMAGE.prompt_tokens + IMAGE.output_tokens
    gpu = GPU.model_copy(update={"memory_gib": 0})
    tiny = dataclasses.replace(COSTS, gpu=gpu)
    tiny = _FixedCapacity(tiny, capacity)
    requests = [IMAGE, IMAGE.model_copy(update={"arrival_s": 1.0001})]
    first, second = simulate(arch.monolithic(1), tiny, requests, None).records
    assert second.first_token_s >= first.finish_s
    roomy = simulate(arch.monolithic(1), _FixedCapacity(COSTS, 10 * capacity), requests, None).records
    assert roomy[1].first_token_s < roomy[0].finish_s


def test_a_request_larger_than_kv_memory_raises_an_actionable_error():
    with pytest.raises(CostModelError, match="never fits"):
        simulate(arch.monolithic(1), _FixedCapacity(COSTS, 10), [IMAGE], None)


class _FixedCapacity:
    """A cost model whose KV memory holds exactly ``tokens`` tokens."""

    def __init__(self, costs, tokens):
        self._costs, self._tokens = costs, tokens
        self.source = costs.source

    def __getattr__(self, name):
        return getattr(self._costs, name)

    def kv_capacity_tokens(self, gpus, hosts_vision):
        return self._tokens


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), spacing=st.floats(1.0, 3.0))
def test_epd_is_never_worse_than_monolithic_on_ttft_under_encode_heavy_load(seed, spacing):
    """Zero transfer cost, unlimited memory, the same 4 GPUs (E|P|D 2/1/1 against 4 x EPD).

    Encode-heavy requests (4 x 4,096 patches, ~90 % of their prefill-stage time in the vision tower)
    with long answers (512 tokens) arrive ``spacing`` x (encode + prefill) apart, so decodes overlap new arrivals.
    E|P|D then gives every request exactly encode + prefill, while a monolithic GPU may first finish a
    decode step or a prefill of an earlier request: no request's TTFT is better under monolithic.
    """
    import random

    rng = random.Random(seed)
    unlimited = _FixedCapacity(COSTS, 1e12)
    shape = IMAGE.model_copy(update={"images": 4, "patches": 16384, "visual_tokens": 256, "output_tokens": 512})
    gap = encode(shape) + prefill(shape.model_copy(update={"text_tokens": 64}))
    requests, clock = [], 0.0
    for _ in range(40):
        clock += gap * spacing * rng.uniform(1.0, 1.5)
        requests.append(shape.model_copy(update={"arrival_s": clock, "text_tokens": rng.randint(16, 64)}))
    monolithic = simulate(arch.monolithic(4), unlimited, requests, None).records
    staged = simulate(arch.e_p_d(2, 1, 1), unlimited, requests, None).records
    for fast, slow in zip(staged, monolithic, strict=True):
        assert fast.ttft <= slow.ttft + 1e-12
    assert statistics.fmean(r.ttft for r in staged) < statistics.fmean(r.ttft for r in monolithic)


@settings(max_examples=40, deadline=None)
@given(threshold=st.floats(0.5, 500.0), start=st.floats(0.1, 1000.0))
def test_goodput_search_brackets_the_threshold_of_a_monotone_attainment(threshold, start):
    result = goodput(lambda rate: 1.0 if rate <= threshold else 0.5, start, relative_tolerance=0.02)
    assert result.rate <= threshold < result.failing_rate
    assert result.failing_rate - result.rate <= 0.02 * result.rate + 1e-12


def test_goodput_search_returns_zero_when_no_rate_meets_the_target():
    assert goodput(lambda rate: 0.0, 1.0, max_doublings=5).rate == 0.0


def _scenario(slo_scale=5.0):
    small = RequestClass("vqa", "image", 1, 1024, 256, (16, 32), (8, 16))
    return Scenario(Workload("vqa", ((small, 1.0),)), COSTS, LINK, PRICES, requests=120,
                    slo_policy=SLOPolicy(slo_scale, slo_scale))


def test_goodput_is_monotone_in_gpus_and_slo():
    scenario = _scenario()
    two = scenario.goodput(arch.monolithic(2), 10.0, relative_tolerance=0.1)
    four = scenario.goodput(arch.monolithic(4), 10.0, relative_tolerance=0.1)
    tight = _scenario(2.0).goodput(arch.monolithic(2), 10.0, relative_tolerance=0.1)
    assert four.rate > two.rate > tight.rate > 0
    attained = dict(two.evaluations)
    assert attained[two.rate] >= 0.9 > attained[two.failing_rate]


def test_simulated_attainment_falls_as_the_rate_rises():
    scenario = _scenario()
    attainments = [scenario.run(arch.e_p_d(1, 1, 1), rate)[1].slo_attainment for rate in (5, 20, 80, 320)]
    assert attainments == sorted(attainments, reverse=True)
    assert attainments[0] > attainments[-1]


def test_metrics_follow_table_5_definitions():
    slo = SLO(ttft_s=1.0, tpot_s=0.1)
    metrics = summarize([0.5, 2.0, 0.9, 0.2], [0.05, 0.05, 0.2, 0.01], [1, 3, 2, 1], output_tokens=40,
                        duration_s=10.0, slos=[slo] * 4, gpus=2, busy_gpu_seconds=5.0, prices=PRICES)
    assert metrics.slo_attainment == 0.5  # requests 1 and 4 meet both bounds
    assert metrics.slo_throughput_rps == pytest.approx(0.2)
    assert metrics.cost_per_successful_request_usd == pytest.approx(3.0 * 20 / 3600 / 2)
    assert metrics.energy_per_token_j == pytest.approx(700 * (5 + 0.3 * 15) / 40)
    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([0, 10], 99) == pytest.approx(9.9)


@settings(max_examples=30)
@given(st.lists(st.tuples(st.floats(0, 1e4), st.integers(1, 4096), st.integers(1, 512)), min_size=1, max_size=20))
def test_trace_file_round_trips(tmp_path_factory, rows):
    requests = [Request(arrival_s=t, modality="image", images=1, patches=p, visual_tokens=p // 4,
                        text_tokens=n, output_tokens=n) for t, p, n in rows]
    path = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    write_trace(requests, path)
    assert read_trace(path) == sorted(requests, key=lambda r: r.arrival_s)


def test_a_bad_trace_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"arrival_s": 0, "modality": "text", "text_tokens": 5, "output_tokens": 2}\n{"arrival_s": -1}\n')
    with pytest.raises(WorkloadError, match="trace.jsonl:2"):
        read_trace(path)


@pytest.mark.parametrize("burstiness", [1.0, 3.0])
def test_gamma_gaps_have_the_requested_mean_and_variation(burstiness):
    gaps = unit_rate_gaps(20_000, burstiness, seed=1)
    assert statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(burstiness, rel=0.1)


def test_rates_scale_one_draw_of_arrivals():
    workload = Workload("vqa", ((RequestClass("vqa", "image", 1, 64, 16, (4, 8), (2, 4)), 1.0),))
    slow, fast = generate(workload, 1.0, 50, seed=3), generate(workload, 4.0, 50, seed=3)
    assert [r.arrival_s / 4 for r in slow] == pytest.approx([r.arrival_s for r in fast])
    assert [r.text_tokens for r in slow] == [r.text_tokens for r in fast]
