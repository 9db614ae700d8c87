"""The reported-results pages: papers' own numbers grouped into comparable settings (one model, one budget), each
row's retention against the baseline its own table prints, and a Pareto chart of retention against the visual
tokens kept."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from tools.models import Metric, Paper, Result, Score
from tools.results import EFFICIENCY_FIELDS
from tools.site.charts import svg_pair

METRIC_ORDER = [metric.value for metric in Metric]  # quality first, then speed, as the schema lists them
NON_SLUG = re.compile(r"[^a-z0-9]+")
CHART_MIN_POINTS = 3  # fewer points than this make no trade-off worth a chart
BUDGET_AXES = {  # setting field -> its axis label, for the settings a Pareto chart can put on its x axis
    "visual_tokens": "visual tokens kept per image",
    "kept_percent": "% of visual tokens kept",
}
EFFICIENCY_LABELS = {
    "flops_t": "TFLOPs",
    "prefill_ms": "Prefill (ms)",
    "latency_ms": "Latency (ms)",
    "memory_gb": "Memory (GB)",
    "speedup": "Speed-up (×)",
    "hardware": "Hardware",
}


@dataclass(frozen=True)
class ResultRow:
    """One paper's result row, with its retention (mean of value / baseline over its quality scores, in %)."""

    paper: Paper
    result: Result
    retention: float | None

    def score(self, benchmark: str, metric: str) -> Score | None:
        return next((s for s in self.result.scores if s.benchmark == benchmark and s.metric == metric), None)


@dataclass(frozen=True)
class Comparison:
    """Every row measured on one model at one setting: the rows of one results page."""

    model: str
    setting: str
    slug: str
    rows: list[ResultRow]
    columns: list[tuple[str, str]]  # (benchmark, metric), the most reported first
    efficiency: list[str]  # efficiency fields at least one row gives

    @property
    def url(self) -> str:
        return f"results/{self.slug}/"

    @property
    def methods(self) -> int:
        return len({row.paper.id for row in self.rows})


def source_label(url: str) -> str:
    """Short link text for a source page: 'arXiv', 'code README' or the host name."""
    host = url.split("/")[2] if "://" in url else url
    if host.endswith("arxiv.org"):
        return "arXiv"
    if host == "github.com":
        return "code README"
    return host.removeprefix("www.")


TABLE_NAME = re.compile(r"^(?:Table|Figure|Tab\.|Fig\.)\s*[A-Z]?\d+", re.IGNORECASE)


def table_name(table: str) -> str:
    """'Table 1' out of "Table 1, block 'Retain 64 Tokens', row ...", or 'table' when none is named."""
    match = TABLE_NAME.match(table)
    return match.group(0) if match else "table"


def slug(text: str) -> str:
    """'LLaVA-1.5-7B, γ = 5' -> 'llava-1-5-7b-gamma-5'."""
    return NON_SLUG.sub("-", text.casefold().replace("γ", "gamma")).strip("-")


def comparisons(papers: list[Paper]) -> list[Comparison]:
    """Rows grouped by (model, setting); groups of the most reported models first, larger budgets first."""
    groups: dict[tuple[str, str], list[ResultRow]] = defaultdict(list)
    budget: dict[tuple[str, str], tuple[float, ...]] = {}
    for paper in papers:
        for result in paper.results:
            key = (result.model, result.setting.label)
            groups[key].append(ResultRow(paper, result, result.retention()))
            setting = result.setting
            budget[key] = tuple(-(value or 0) for value in (setting.visual_tokens, setting.kept_percent,
                                                           setting.kv_budget_tokens, setting.kv_budget_percent))
    per_model: Counter[str] = Counter()
    for (model, _), rows in groups.items():
        per_model[model] += len(rows)
    out = []
    for (model, setting), rows in sorted(groups.items(), key=lambda item: (-per_model[item[0][0]], item[0][0],
                                                                            budget[item[0]], item[0][1])):
        rows.sort(key=lambda row: (row.retention is None, -(row.retention or 0), row.paper.display_name.casefold()))
        reported = Counter((s.benchmark, s.metric) for row in rows for s in row.result.scores)
        columns = sorted(reported, key=lambda column: (-reported[column], METRIC_ORDER.index(column[1]),
                                                       column[0].casefold()))
        efficiency = [name for name in EFFICIENCY_FIELDS
                      if any(row.result.efficiency and getattr(row.result.efficiency, name) is not None
                             for row in rows)]
        out.append(Comparison(model, setting, slug(f"{model} {setting}"), rows, columns, efficiency))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: none keeps fewer (or as few) tokens with higher (or equal) retention,
    better in at least one. Sorted by the budget."""
    front = []
    for budget, retention in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or retention > front[-1][1]:
            front.append((budget, retention))
    return front


def chart_points(comparisons_of_model: list[Comparison], axis: str) -> list[tuple[float, float, str]]:
    """(budget, retention, method) for every row whose setting is only `axis` (plus the frames of a video)."""
    points = []
    for comparison in comparisons_of_model:
        for row in comparison.rows:
            setting = row.result.setting.model_dump(exclude_none=True)
            setting.pop("frames", None)
            if set(setting) == {axis} and row.retention is not None:
                points.append((float(setting[axis]), row.retention, row.paper.display_name))
    return points


def pareto_charts(groups: list[Comparison]) -> dict[str, dict[str, Any]]:
    """For each model with enough budget-only rows: {'slug', 'axis', 'points', 'svg': {'light', 'dark'}}."""
    by_model: dict[str, list[Comparison]] = defaultdict(list)
    for comparison in groups:
        by_model[comparison.model].append(comparison)
    charts = {}
    for model, members in by_model.items():
        for axis, label in BUDGET_AXES.items():
            points = chart_points(members, axis)
            if len(points) < CHART_MIN_POINTS:
                continue
            charts[model] = {"slug": slug(f"pareto {model} {axis}"), "axis": label, "points": len(points),
                             "svg": svg_pair(lambda axes, theme, p=points, x=label: draw_pareto(axes, theme, p, x),
                                             (7.5, 4.2))}
            break
    return charts


def draw_pareto(axes: Any, theme: dict[str, str], points: list[tuple[float, float, str]], x_label: str) -> None:
    front = pareto_front([(budget, retention) for budget, retention, _ in points])
    on_front = set(front)
    axes.scatter([p[0] for p in points], [p[1] for p in points], s=16, color="#5c6bc0", alpha=0.55,
                 label="a method at one budget")
    axes.step([p[0] for p in front], [p[1] for p in front], where="post", color="#e8773a", linewidth=1.4,
              label="Pareto front (fewest tokens for the retention)")
    labelled = set()
    for budget, retention, name in points:
        if (budget, retention) in on_front and (budget, retention) not in labelled:
            labelled.add((budget, retention))
            axes.annotate(name, (budget, retention), xytext=(4, 3), textcoords="offset points", fontsize=7)
    axes.axhline(100, color=theme["grid"], linewidth=0.8, linestyle="--")
    axes.set_xlabel(x_label)
    axes.set_ylabel("mean retention vs. own baseline (%)")
    axes.grid(linewidth=0.5)
    axes.set_axisbelow(True)
    axes.legend(frameon=False, fontsize=7, loc="lower right")
    axes.spines[["top", "right"]].set_visible(False)


def rows_by_paper(groups: list[Comparison]) -> dict[str, list[tuple[ResultRow, Comparison]]]:
    """Each paper's rows, in its file's order, with the comparison page each belongs to, for the paper pages."""
    out: dict[str, list[tuple[ResultRow, Comparison]]] = defaultdict(list)
    for comparison in groups:
        for row in comparison.rows:
            out[row.paper.id].append((row, comparison))
    for rows in out.values():
        rows.sort(key=lambda pair: pair[0].paper.results.index(pair[0].result))
    return out
