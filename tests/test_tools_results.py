"""Reported results: the row schema, retention, comparable settings, the Pareto front and `export-results`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tools.cli import main
from tools.models import Result, Setting
from tools.site.results import pareto_front, slug

SOURCE = {"url": "https://arxiv.org/html/2403.06764v1", "table": "Table 1"}


def row(**overrides) -> dict:
    data = {"model": "LLaVA-1.5-7B", "setting": {"visual_tokens": 64}, "source": SOURCE,
            "scores": [{"benchmark": "GQA", "value": 52.7, "baseline": 61.9},
                       {"benchmark": "MME", "metric": "score", "value": 1505, "baseline": 1862}]}
    return {**data, **overrides}


def test_retention_is_the_mean_ratio_to_the_rows_own_baseline() -> None:
    result = Result.model_validate(row())
    assert result.retention() == pytest.approx(100 * (52.7 / 61.9 + 1505 / 1862) / 2)
    speed = Result.model_validate(row(scores=[{"benchmark": "GQA", "metric": "speedup", "value": 2.1}]))
    assert speed.retention() is None  # a speed-up has no quality baseline to retain


@pytest.mark.parametrize(("scores", "message"), [
    ([{"benchmark": "GQA", "value": 52.7}], "'baseline' is missing"),
    ([{"benchmark": "GQA", "metric": "speedup", "value": 2.1, "baseline": 1.0}], "remove 'baseline'"),
    ([{"benchmark": "MME", "value": 1505, "baseline": 1862}], "outside 0-100"),
    ([{"benchmark": "GQA", "value": 52.7, "baseline": 61.9}, {"benchmark": "GQA", "value": 53, "baseline": 61.9}],
     "given twice in one row"),
    ([], "at least 1 item"),
])
def test_a_bad_score_is_refused_with_a_reason(scores: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Result.model_validate(row(scores=scores))


def test_a_setting_must_state_a_budget_and_labels_what_it_states() -> None:
    with pytest.raises(ValidationError, match="give at least one of visual_tokens"):
        Setting.model_validate({})
    assert Setting(visual_tokens=64, frames=32).label == "64 visual tokens, 32 frames"
    assert Setting(kept_percent=11.1).label == "11.1 % of visual tokens"
    assert Setting(kv_budget_percent=10, kv_bits=2).label == "KV budget 10 %, 2-bit KV"
    assert Setting(draft_model="LLaVA-160M", draft_length=5, temperature=0).label == "draft LLaVA-160M, γ = 5, T = 0"
    assert slug("LLaVA-1.5-7B γ = 5, T = 0") == "llava-1-5-7b-gamma-5-t-0"


def test_the_pareto_front_keeps_only_points_no_cheaper_point_beats() -> None:
    points = [(64, 90.0), (64, 94.0), (128, 93.0), (128, 97.5), (192, 97.0), (192, 99.0), (32, 85.0)]
    assert pareto_front(points) == [(32, 85.0), (64, 94.0), (128, 97.5), (192, 99.0)]
    assert pareto_front([(64, 95.0), (128, 95.0)]) == [(64, 95.0)]  # the same retention for more tokens: beaten
    assert pareto_front([]) == []


def with_results(repo: Path) -> None:
    paper = repo / "papers" / "fastv-2024.yaml"
    paper.write_text(paper.read_text(encoding="utf-8") + """results:
  - model: LLaVA-1.5-7B
    setting: {visual_tokens: 64}
    scores:
      - {benchmark: GQA, value: 46.1, baseline: 61.9}
      - {benchmark: MME, metric: score, value: 1256, baseline: 1862}
    efficiency: {prefill_ms: 92, hardware: A100}
    source: {url: "https://arxiv.org/html/2403.06764v1", table: Table 3}
    note: "the table calls the budget 'Retain 64 tokens'"
""", encoding="utf-8")


def test_export_results_writes_one_record_per_number(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_results(tiny_repo)
    assert main(["--root", str(tiny_repo), "export-results"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["benchmark"], r["metric"], r["value"], r["baseline"]) for r in records] == [
        ("GQA", "accuracy", "46.1", "61.9"), ("MME", "score", "1256", "1862")]
    assert {r["setting"] for r in records} == {"64 visual tokens"}
    assert {(r["prefill_ms"], r["hardware"], r["source_table"]) for r in records} == {("92", "A100", "Table 3")}

    target = tiny_repo / "results.json"
    assert main(["--root", str(tiny_repo), "export-results", "--format", "json", "-o", str(target)]) == 0
    data = json.loads(target.read_text(encoding="utf-8"))
    assert [r["value"] for r in data["results"]] == [46.1, 1256]
    assert data["results"][0]["note"] == "the table calls the budget 'Retain 64 tokens'"
    assert "wrote 2 reported numbers" in capsys.readouterr().err


def test_export_results_refuses_invalid_data_and_writes_nothing(tiny_repo: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with_results(tiny_repo)
    paper = tiny_repo / "papers" / "fastv-2024.yaml"
    paper.write_text(paper.read_text(encoding="utf-8").replace("value: 46.1, baseline: 61.9", "value: 46.1"),
                     encoding="utf-8")
    target = tiny_repo / "results.csv"
    assert main(["--root", str(tiny_repo), "export-results", "-o", str(target)]) == 1
    assert "results.0.scores.0: GQA: 'baseline' is missing" in capsys.readouterr().err
    assert not target.exists()
