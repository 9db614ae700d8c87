"""The pilot study pages and the roofline: result files under pilot_experiments/results/ turned into pages."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markdown
from markdown.extensions.toc import TocExtension

from tools.site.charts import FALLBACK_COLOUR, STAGE_COLOURS, svg_pair

log = logging.getLogger("mkdocs.hooks.site")

RESULTS_DIR = Path("pilot_experiments") / "results"
# The four frontier studies of the survey (section 6); results/<study>/ may also hold others.
STUDIES = {
    "hybrid-kv": (
        "Hybrid KV cache compression",
        "Heads are classified by how they attend to visual and to text tokens, and each class gets its own "
        "cache budget and operator (pruning, retrieval or quantization), compared with uniform baselines.",
    ),
    "relaxed-spec": (
        "Relaxed speculative decoding",
        "A draft that sees a fraction of the visual tokens proposes tokens; verification is strict on words "
        "that carry visual content and relaxed on function words.",
    ),
    "streaming": (
        "Streaming video state",
        "Memory, latency and accuracy of cache policies for an unbounded video stream, from a sliding window "
        "to a hierarchical memory that retrieves old frames on demand.",
    ),
    "serving": (
        "Disaggregated serving",
        "A discrete-event simulation of monolithic, stage-disaggregated, modality-partitioned and "
        "SM-multiplexed serving at equal GPU count, with goodput and tail latency per workload.",
    ),
}
ROOFLINE_RESULTS = "roofline"  # results/roofline/ holds `python -m pilot_experiments roofline` runs
ROOF_COLOURS = ("#5c6bc0", "#26a69a", "#ef6c00", "#8d6e63")
POINT_STAGES = {"encode": "encoding", "prefill": "prefilling", "decode": "decoding"}
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def study_title(study: str) -> str:
    return STUDIES.get(study, (study.replace("-", " ").capitalize(), ""))[0]


def safe_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML disabled (any tag comes out as escaped text) and headings shifted below
    the page's own (a results file's `#` becomes an h4). HTML comments, such as "generated" notes, are dropped."""
    converter = markdown.Markdown(extensions=["tables", "fenced_code", TocExtension(baselevel=4)])
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    return converter.convert(HTML_COMMENT.sub("", text))


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: a results/<study>/<stem>.json file and its companions of the same stem."""

    stem: str
    facts: list[tuple[str, str]]
    table_html: str | None
    json_asset: str | None
    images: list[str]


RUN_FACTS = ("study", "preset", "device", "device_name", "torch", "torch_version", "git_commit", "commit", "seed",
             "wall_s", "wall_time_s", "wall_time", "finished_utc", "created", "timestamp", "python")


def study_runs(results: Path, study: str) -> tuple[list[StudyRun], dict[str, Path]]:
    """The runs found under results/<study>/ and the files to publish with them."""
    folder = results / study
    if not folder.is_dir():
        return [], {}
    assets: dict[str, Path] = {}
    stems = sorted({p.stem for p in folder.iterdir() if p.suffix in {".json", ".md"}})
    images_by_stem: dict[str, list[Path]] = defaultdict(list)
    for image in sorted(folder.iterdir()):
        if image.suffix == ".png" and image.with_suffix(".svg").is_file():
            continue  # the same plot as SVG: keep the sharper one
        if image.suffix in {".png", ".svg"}:
            owner = next((s for s in stems if image.stem.startswith(s)), "")
            images_by_stem[owner].append(image)
    runs = []
    for stem in stems:
        facts: list[tuple[str, str]] = []
        json_asset = None
        json_path = folder / f"{stem}.json"
        if json_path.is_file():
            json_asset = f"pilots/{study}/{json_path.name}"
            assets[json_asset] = json_path
            try:
                record = json.loads(json_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("pilot result %s is not valid JSON (%s); publishing it as a file only", json_path, exc)
                record = {}
            if isinstance(record, dict):
                facts = [(key, flat(record[key])) for key in RUN_FACTS if key in record]
        md_path = folder / f"{stem}.md"
        table_html = safe_markdown(md_path.read_text(encoding="utf-8")) if md_path.is_file() else None
        images = []
        for image in images_by_stem.get(stem, []):
            images.append(f"pilots/{study}/{image.name}")
            assets[images[-1]] = image
        runs.append(StudyRun(stem, facts, table_html, json_asset, images))
    for image in images_by_stem.get("", []):
        key = f"pilots/{study}/{image.name}"
        assets[key] = image
        runs.append(StudyRun(image.stem, [], None, None, [key]))
    return runs, assets


def flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={flat(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def roofline_chart() -> tuple[dict[str, str] | None, Any, str]:
    """A Figure 4-style roofline (A100, H100, H200) from `pilot_experiments.roofline.chart_data()`.

    Returns the light and dark SVGs and the chart data, or (None, None, why it is missing).
    """
    try:
        from pilot_experiments import roofline

        chart = roofline.chart_data()
    except Exception as exc:  # noqa: BLE001 - the module may be absent or unfinished; the page says so
        return None, None, f"pilot_experiments.roofline.chart_data() is not usable yet ({type(exc).__name__}: {exc})"

    def draw(axes: Any, theme: dict[str, str]) -> None:
        intensities = [p.intensity for p in chart.points] + [r.ridge_intensity for r in chart.roofs]
        low, high = min(0.1, min(intensities) / 3), max(1e4, max(intensities) * 3)
        grid = [low * (high / low) ** (i / 200) for i in range(201)]
        for roof, colour in zip(chart.roofs, ROOF_COLOURS):
            axes.plot(grid, [min(roof.peak_flops, x * roof.bandwidth) for x in grid], color=colour, linewidth=1.4,
                      label=f"{roof.gpu} (ridge {roof.ridge_intensity:.0f} FLOP/B)")
            axes.axvline(roof.ridge_intensity, color=colour, linestyle=":", linewidth=0.8)
        for point in chart.points:
            colour = STAGE_COLOURS.get(POINT_STAGES.get(point.stage, ""), FALLBACK_COLOUR)
            axes.scatter(point.intensity, point.flops_per_second, color=colour, s=45, zorder=3, label=point.label)
            above = point.stage == "prefill"
            axes.annotate(f"{point.stage}: {point.intensity:.3g} FLOP/B", (point.intensity, point.flops_per_second),
                          textcoords="offset points", xytext=(-6, 8) if above else (6, -14),
                          ha="right" if above else "left", fontsize=8, color=theme["text"])
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("arithmetic intensity (FLOP/byte)")
        axes.set_ylabel("attainable FLOP/s")
        axes.grid(True, which="major", linewidth=0.4)
        axes.legend(fontsize=7, loc="lower right", frameon=False)
        axes.spines[["top", "right"]].set_visible(False)

    try:
        return svg_pair(draw, (7.5, 4.8)), chart, ""
    except Exception as exc:  # noqa: BLE001 - a broken chart must not break the whole site
        log.warning("the roofline chart could not be drawn: %s", exc)
        return None, None, f"drawing the roofline failed ({type(exc).__name__}: {exc})"
