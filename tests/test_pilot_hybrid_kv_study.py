"""The hybrid-kv study end to end on the smoke preset: results files and what they must hold."""

from __future__ import annotations

import json

import pytest

from pilot_experiments import harness
from pilot_experiments.__main__ import main
from pilot_experiments.studies.hybrid_kv import study


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cfg = study.config_for("smoke")
    path = harness.run_study(study.STUDY, "smoke", study.run, cfg, seed=cfg.seed, device="cpu", results_dir=out)
    return json.loads(path.read_text()), path


def test_smoke_run_measures_every_method_at_every_budget(smoke_results):
    payload, _ = smoke_results
    got = {(r["method"], r["budget"]) for r in payload["rows"]}
    assert got == {("FullCache", "100%")} | {(m, "20%") for m in ("LookM", "MadaKV", "SparseMM", "Hybrid")}
    full = next(r for r in payload["rows"] if r["method"] == "FullCache")
    assert full["retention"] == 1.0 and full["visual kept"] == 1.0


def test_compressed_methods_keep_their_budget_and_less_memory(smoke_results):
    payload, _ = smoke_results
    full = next(r for r in payload["rows"] if r["method"] == "FullCache")
    for row in payload["rows"]:
        if row["method"] == "FullCache":
            continue
        assert row["visual kept"] == pytest.approx(0.2, abs=0.01)
        assert row["total kept"] > row["visual kept"]  # text is always kept
        assert row["KV resident KiB"] < full["KV resident KiB"] and row["KV logical KiB"] < full["KV logical KiB"]
        assert row["long-ctx resident KiB compacted"] < row["long-ctx resident KiB masked"]
        # The total footprint counts what is offloaded too, so it shrinks less than what stays resident.
        assert row["KV total KiB"] >= row["KV resident KiB"] and row["total reduction x"] <= row["KV reduction x"]
    hybrid = next(r for r in payload["rows"] if r["method"] == "Hybrid")
    assert hybrid["offloaded KiB"] > 0 and hybrid["total reduction x"] < hybrid["KV reduction x"]
    # Only Hybrid copies chunks back from its offload store, at every decode step.
    assert hybrid["moved KiB/step"] > 0 and all(r["moved KiB/step"] == 0 for r in payload["rows"] if r["method"] != "Hybrid")
    timing = payload["metrics"]["results"]["Hybrid@0.2"]["latency"]["compacted"]
    assert timing["rounds"] == 1 and timing["tpot_iqr_ms"][0] <= timing["tpot_ms"] <= timing["tpot_iqr_ms"][1]
    targets = payload["metrics"]["targets"]
    assert targets["tpot_ratio@20%"]["verdict"] == "not judged (CPU run)"  # a CPU run cannot judge the GPU target
    assert {t["verdict"] for name, t in targets.items() if name != "tpot_ratio@20%"} == {"no verdict (smoke run)"}
    retention = targets["retention@20%"]
    assert retention["interval"]["low"] <= retention["measured"] <= retention["interval"]["high"]


def test_question_agnostic_is_the_primary_protocol_and_the_others_are_reported(smoke_results):
    payload, path = smoke_results
    assert payload["metrics"]["protocol"] == "question-agnostic"
    by_protocol = payload["metrics"]["retention_by_protocol"]
    assert set(by_protocol) == {"question-agnostic", "question-aware", "multi-turn"}
    single = by_protocol["question-agnostic"]["Hybrid@0.2"]["items"]
    assert by_protocol["question-aware"]["Hybrid@0.2"]["items"] == single
    assert 0 < by_protocol["multi-turn"]["Hybrid@0.2"]["items"] <= single // 2  # the second question of each pair
    for protocol in by_protocol.values():
        for r in protocol.values():  # NaN where a smoke model's full cache scores nothing under that protocol
            assert r["low"] <= r["value"] <= r["high"] or r["value"] != r["value"]
    hybrid = next(r for r in payload["rows"] if r["method"] == "Hybrid")
    assert {"retention question-aware", "retention multi-turn"} <= set(hybrid)
    assert "## Retention by protocol" in path.with_suffix(".md").read_text()


def test_results_page_has_the_survey_comparisons(smoke_results):
    _, path = smoke_results
    page = path.with_suffix(".md").read_text()
    assert page.startswith("<!-- generated")
    for heading in ("## Targets", "## Table 7 analogue at 20%", "## Table 8 analogue", "arXiv 2604.05887"):
        assert heading in page
    assert path.with_suffix(".svg").stat().st_size > 0


def test_cli_registers_the_study(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["hybrid-kv", "--help"])
    assert exit_info.value.code == 0
    assert "--preset" in capsys.readouterr().out
