"""The statistics charts: matplotlib SVGs, one light and one dark version each, text kept as text."""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from pilot_experiments import plot_style
from tools.models import Paper
from tools.repository import Repository
from tools.site.papers import node_label

TOP_VENUES = 15
HEATMAP_YEARS = 10
STAGE_COLOURS = {
    "encoding": "#3f6fd8",
    "prefilling": "#e8773a",
    "decoding": "#2e9e5b",
    "system": "#8e5fc5",
    "benchmark": "#b5833a",
    "model": "#d1568f",
    "survey": "#7d8590",
}
FALLBACK_COLOUR = "#999999"


THEMES = {  # the studies' plot ink (pilot_experiments.plot_style), plus the colour of an empty heat-map cell
    "light": {**plot_style.LIGHT, "empty": "#f3f4f6"},
    "dark": {**plot_style.DARK, "empty": "#22272e"},
}


def svg_pair(draw: Callable[[Any, dict[str, str]], None], size: tuple[float, float]) -> dict[str, str]:
    """Render `draw(axes, theme)` to SVG text for each theme, with transparent backgrounds and text kept as text."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rendered = {}
    for name, theme in THEMES.items():
        with plt.rc_context(plot_style.rc(theme)):
            figure, axes = plt.subplots(figsize=size)
            draw(axes, theme)
            figure.tight_layout()
            buffer = io.StringIO()
            plot_style.save_svg(figure, buffer)
            plt.close(figure)
        rendered[name] = buffer.getvalue()
    return rendered


def year_bins(years: Iterable[int]) -> tuple[list[int], int]:
    """The last HEATMAP_YEARS years with papers; earlier years are folded into the first bin."""
    present = sorted(set(years)) or [dt.date.today().year]
    last = present[-1]
    first = max(present[0], last - HEATMAP_YEARS + 1)
    return list(range(first, last + 1)), first


def year_label(year: int, first: int, folded: bool) -> str:
    return f"≤{year}" if year == first and folded else str(year)


def charts(repo: Repository, under: dict[str, list[Paper]]) -> dict[str, dict[str, str]]:
    """Every statistics chart by name, each as {'light': svg, 'dark': svg}."""
    papers = repo.papers
    stages = [stage.id for stage in repo.taxonomy.stages]
    stage_names = {stage.id: stage.name for stage in repo.taxonomy.stages}
    years, first = year_bins(p.year for p in papers)
    folded = any(p.year < first for p in papers)
    labels = [year_label(y, first, folded) for y in years]

    def binned(year: int) -> int:
        return max(year, first)

    def by_year(axes: Any, theme: dict[str, str]) -> None:
        bottom = [0] * len(years)
        for stage in stages:
            counts = Counter(binned(p.year) for p in papers if p.stage == stage)
            heights = [counts.get(y, 0) for y in years]
            if any(heights):
                axes.bar(labels, heights, bottom=bottom, label=stage_names[stage],
                         color=STAGE_COLOURS.get(stage, FALLBACK_COLOUR))
                bottom = [b + h for b, h in zip(bottom, heights)]
        axes.set_ylabel("papers (primary placement)")
        axes.grid(axis="y", linewidth=0.5)
        axes.set_axisbelow(True)
        axes.legend(frameon=False, fontsize=8, ncols=2)
        axes.spines[["top", "right"]].set_visible(False)

    second_level = [path for path, node in repo.nodes.items() if node.depth == 1]
    second_level += [s for s in stages if not repo.nodes[s].node.children]

    def per_node(axes: Any, theme: dict[str, str]) -> None:
        rows = list(reversed(second_level))
        counts = [len(under[path]) for path in rows]
        colours = [STAGE_COLOURS.get(path.split("/")[0], FALLBACK_COLOUR) for path in rows]
        axes.barh([node_label(repo, path) for path in rows], counts, color=colours)
        for position, count in enumerate(counts):
            axes.text(count, position, f" {count}", va="center", fontsize=7)
        axes.set_xlabel("papers placed in the subtree")
        axes.spines[["top", "right"]].set_visible(False)

    def heatmap(axes: Any, theme: dict[str, str]) -> None:
        from matplotlib.colors import LinearSegmentedColormap

        grid = []
        for path in second_level:
            counts = Counter(binned(p.year) for p in under[path])
            grid.append([counts.get(y, 0) for y in years])
        cmap = LinearSegmentedColormap.from_list("lvlm", [theme["empty"], "#3f51b5"])
        axes.imshow(grid, cmap=cmap, aspect="auto")
        peak = max((v for row in grid for v in row), default=0) or 1
        for r, row in enumerate(grid):
            for c, value in enumerate(row):
                if value:
                    colour = "#ffffff" if value > peak * 0.5 else theme["text"]
                    axes.text(c, r, str(value), ha="center", va="center", fontsize=7, color=colour)
        axes.set_xticks(range(len(years)), labels)
        axes.set_yticks(range(len(second_level)), [node_label(repo, p) for p in second_level])
        axes.tick_params(length=0)
        for spine in axes.spines.values():
            spine.set_visible(False)

    venue_counts = Counter(p.venue for p in papers).most_common()
    top = venue_counts[:TOP_VENUES]
    rest = sum(count for _, count in venue_counts[TOP_VENUES:])

    def venues(axes: Any, theme: dict[str, str]) -> None:
        rows = list(reversed(top + ([("other venues", rest)] if rest else [])))
        axes.barh([name for name, _ in rows], [count for _, count in rows], color="#5c6bc0")
        for position, (_, count) in enumerate(rows):
            axes.text(count, position, f" {count}", va="center", fontsize=7)
        axes.set_xlabel("papers")
        axes.spines[["top", "right"]].set_visible(False)

    code_rows = [(stage, [p for p in papers if p.stage == stage]) for stage in stages]
    code_rows = [(stage, members) for stage, members in code_rows if members]

    def code_share(axes: Any, theme: dict[str, str]) -> None:
        rows = list(reversed(code_rows))
        shares = [100 * sum(1 for p in members if p.code) / len(members) for _, members in rows]
        axes.barh([stage_names[stage] for stage, _ in rows], shares,
                  color=[STAGE_COLOURS.get(stage, FALLBACK_COLOUR) for stage, _ in rows])
        for position, ((_, members), share) in enumerate(zip(rows, shares)):
            with_code = sum(1 for p in members if p.code)
            axes.text(share, position, f" {share:.0f}% ({with_code}/{len(members)})", va="center", fontsize=7)
        axes.set_xlim(0, 115)
        axes.set_xlabel("% of papers with a recorded code link")
        axes.spines[["top", "right"]].set_visible(False)

    height = 0.28 * len(second_level) + 0.8
    return {
        "papers-per-year": svg_pair(by_year, (7.5, 3.6)),
        "papers-per-node": svg_pair(per_node, (7.5, height)),
        "node-year-heatmap": svg_pair(heatmap, (7.5, height)),
        "venues": svg_pair(venues, (7.5, 0.28 * (len(top) + 1) + 0.8)),
        "code-share": svg_pair(code_share, (7.5, 0.35 * len(code_rows) + 0.8)),
    }
