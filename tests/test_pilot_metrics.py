"""Metrics and harness: timing medians, peak memory, generation timing, results files."""

import json
import subprocess
import sys

import pytest
import torch

from pilot_experiments import harness, metrics, plot_style
from pilot_experiments.model import LVLM
from tests.test_pilot_model import TINY, prompt_parts


def test_time_call_reports_the_median_of_the_timed_repeats():
    calls = []
    timing = metrics.time_call(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing.samples_s) == 5
    assert timing.median_s == sorted(timing.samples_s)[2]


PEAK_PROBE = """
import json, torch
from pilot_experiments import metrics
with metrics.PeakMemory("cpu") as mem:
    x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB
    del x
print(json.dumps({"peak": mem.peak_bytes, "delta": mem.delta_bytes, "exact": mem.exact}))
"""


def test_peak_memory_sees_a_large_allocation(repo_root):
    # In a fresh process: after earlier tests free large buffers, an allocator may serve the
    # 64 MiB from pages that are already resident, and RSS (what the CPU path reads) does not move.
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE], cwd=repo_root, capture_output=True, text=True, check=True)
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    assert mem["peak"] > 0
    if mem["exact"]:
        assert mem["delta"] >= 48 * 1024 * 1024


def test_generation_timing_and_kv_bytes_on_a_tiny_model():
    torch.manual_seed(0)
    model = LVLM(TINY).eval()
    inputs = model.embed_prompt(*prompt_parts())
    seen = []
    t = metrics.time_generation(model, inputs, new_tokens=4, warmup=1, repeats=2, after_prefill=lambda c: seen.append(metrics.kv_bytes(c)))
    assert t.ttft_s > 0 and t.tpot_s > 0 and t.throughput_tok_s > 0 and t.new_tokens == 4
    assert len(seen) == 3  # warm-up + repeats, each after its own prefill
    per_entry = 2 * TINY.head_dim * 4 * TINY.lm_kv_heads * TINY.lm_layers
    assert seen[0]["logical"] == inputs.length * per_entry


def test_retention_and_agreement():
    assert metrics.retention(0.45, 0.9) == pytest.approx(0.5)
    assert metrics.agreement([[1, 2], [3]], [[1, 2], [4]]) == 0.5
    with pytest.raises(metrics.MetricsError):
        metrics.retention(0.5, 0.0)


def test_a_study_plot_is_svg_in_the_light_ink_and_its_dark_variant_swaps_the_ink(tmp_path):
    def study(config):
        def plot(figure):
            axes = figure.subplots()
            axes.plot([0, 1], [1, 0], label="a")
            axes.set_xlabel("budget")
            axes.grid(True)
            axes.legend()
        return harness.StudyRecord({}, [{"method": "a"}], plot)

    path = harness.run_study("demo", "smoke", study, {}, device="cpu", results_dir=tmp_path)
    svg = path.with_suffix(".svg").read_text()
    assert "budget</text>" in svg, "labels are kept as text, not paths"
    assert plot_style.LIGHT["text"] in svg and plot_style.LIGHT["grid"] in svg
    assert "#ffffff" not in svg.lower(), "the background is transparent"
    dark = plot_style.dark_variant(svg)
    assert plot_style.DARK["text"] in dark and plot_style.DARK["grid"] in dark
    assert plot_style.LIGHT["text"] not in dark and plot_style.LIGHT["grid"] not in dark


def test_run_study_writes_json_markdown_and_plot(tmp_path):
    def study(config):
        return harness.StudyRecord({"accuracy": 0.5 * config["k"]}, [{"method": "a", "acc": 0.5}], lambda fig: fig.subplots().plot([0, 1], [1, 0]))

    path = harness.run_study("demo", "smoke", study, {"k": 2}, seed=3, device="cpu", results_dir=tmp_path)
    data = json.loads(path.read_text())
    assert path == tmp_path / "demo" / "smoke-cpu.json"
    assert data["metrics"] == {"accuracy": 1.0} and data["seed"] == 3 and data["config"] == {"k": 2}
    assert {"study", "preset", "device", "torch", "git_commit", "wall_s"} <= data.keys()
    assert "| method | acc |" in (tmp_path / "demo" / "smoke-cpu.md").read_text()
    assert (tmp_path / "demo" / "smoke-cpu.svg").exists()
    with pytest.raises(harness.HarnessError, match="unknown preset"):
        harness.run_study("demo", "huge", study, {"k": 1}, device="cpu", results_dir=tmp_path)


def test_paired_bootstrap_interval_covers_the_statistic_and_pairs_the_items() -> None:
    from pilot_experiments import metrics as m

    a = [1.0, 0.0] * 150
    same = m.paired_bootstrap(m.difference_of_means, a, list(a))
    assert same.low == same.high == same.value == 0.0  # paired resampling: identical samples never differ
    b = [1.0, 1.0] * 150
    gap = m.paired_bootstrap(m.difference_of_means, b, a, seed=1)
    assert gap.low <= gap.value == 0.5 <= gap.high and gap.low > 0.4
    with pytest.raises(m.MetricsError):
        m.paired_bootstrap(m.difference_of_means, [1.0], [1.0, 0.0])


@pytest.mark.parametrize(("low", "high", "bar", "at_least", "expected"), [
    (0.96, 0.99, 0.95, True, "met"), (0.90, 0.94, 0.95, True, "missed"), (0.93, 0.97, 0.95, True, "not resolved"),
    (0.50, 0.70, 0.75, False, "met"), (0.80, 0.90, 0.75, False, "missed"), (0.70, 0.80, 0.75, False, "not resolved"),
])
def test_verdicts_are_three_valued(low, high, bar, at_least, expected) -> None:
    from pilot_experiments import metrics as m

    assert m.verdict(m.Interval((low + high) / 2, low, high), bar, at_least=at_least) == expected


@pytest.mark.parametrize(("verdicts", "expected"), [
    (["met", "met"], "met"), (["met", "not resolved"], "not resolved"), (["not resolved", "missed"], "missed"), ([], "not resolved"),
])
def test_a_target_of_several_conditions_is_met_only_when_all_are(verdicts, expected) -> None:
    from pilot_experiments import metrics as m

    assert m.all_of(verdicts) == expected
    assert m.ratio_of_sums([2.0, 4.0], [1.0, 2.0]) == 2.0
