"""The pilot study pages and the roofline: result files under pilot_experiments/results/ turned into pages."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markdown
from markdown.extensions.toc import TocExtension

from pilot_experiments import plot_style
from tools.site.charts import FALLBACK_COLOUR, STAGE_COLOURS, svg_pair

log = logging.getLogger("mkdocs.hooks.site")

RESULTS_DIR = Path("pilot_experiments") / "results"


@dataclass(frozen=True)
class Study:
    """One pilot page: the study, what it can and cannot show, the results folders (with their labels) and code it
    documents, and the command that runs it (empty when unknown)."""

    slug: str
    title: str
    about: str
    caveat: str
    folders: tuple[tuple[str, str], ...]
    code: tuple[str, ...]
    command: str = ""


MODEL_CODE = ("pilot_experiments/model.py", "pilot_experiments/synthvis.py", "pilot_experiments/train.py")
# The four frontier studies of the survey (section 6), then the runs that support them.
STUDIES = (
    Study("hybrid-kv", "Hybrid KV cache compression",
          "Heads are classified by how they attend to visual and to text tokens, and each class gets its own "
          "cache budget and operator (pruning, retrieval or quantization), compared with uniform baselines.",
          "A 3 M-parameter model on synthetic pictures and videos: how the policies rank here need not carry over "
          "to a real VLM (on the real SmolLM2-135M weights the ranking reverses, see Real checkpoints).",
          (("hybrid-kv", "Study"),),
          ("pilot_experiments/studies/hybrid_kv", "pilot_experiments/kvcache.py", *MODEL_CODE),
          "python -m pilot_experiments hybrid-kv --preset cpu"),
    Study("relaxed-spec", "Relaxed speculative decoding",
          "A draft that sees a fraction of the visual tokens proposes tokens; verification is strict on words "
          "that carry visual content and relaxed on function words.",
          "Speedups are wall-clock times of small models on a CPU, where Python dispatch dominates each step; "
          "they say little about a GPU, and values below 1 are expected.",
          (("relaxed-spec", "Study"),), ("pilot_experiments/studies/relaxed_spec", *MODEL_CODE),
          "python -m pilot_experiments relaxed-spec --preset cpu"),
    Study("streaming", "Streaming video state",
          "Memory, latency and accuracy of cache policies for an unbounded video stream, from a sliding window "
          "to a hierarchical memory that retrieves old frames on demand.",
          "Few questions about the far past per run, so far-past accuracies move a lot between checkpoints; "
          "latencies are CPU wall-clock times.",
          (("streaming", "Study"),),
          ("pilot_experiments/studies/streaming", "pilot_experiments/kvcache.py", *MODEL_CODE),
          "python -m pilot_experiments streaming --preset cpu"),
    Study("serving", "Disaggregated serving",
          "A discrete-event simulation of monolithic, stage-disaggregated, modality-partitioned and "
          "SM-multiplexed serving at equal GPU count, with goodput and tail latency per workload.",
          "Stage costs come from the roofline model or from profiles measured on this CPU, not from a GPU "
          "cluster; the validation runs check the simulator against a small real deployment.",
          (("serving", "Simulation"), ("serving-validation", "Validation against a measured deployment"),
           ("serving-validation-vit-s", "Validation with a real ViT-S encoder")),
          ("pilot_experiments/studies/serving",), "python -m pilot_experiments serving --preset cpu"),
    Study("reference-models", "Reference LVLM",
          "The small vision-language models the studies run on, trained reproducibly on SynthVis: the target "
          "and the draft used by speculative decoding.",
          "Trained on a synthetic visual world for minutes on a CPU; their quality is only meaningful there.",
          (("train-target", "Target model"), ("train-draft", "Draft model")), MODEL_CODE,
          "python -m pilot_experiments train --size target --preset cpu"),
    Study("hybrid-kv-kvpress", "KV policies in kvpress",
          "The hybrid-kv study's policies (LOOK-M, MadaKV, HybridKV) as kvpress presses, beside kvpress's own "
          "(SnapKV, AdaKV, StreamingLLM, TOVA, ExpectedAttention) on one model, the same prompts and the same "
          "budgets, in kvpress's question-agnostic protocol.",
          "SmolLM2-135M on ten written scenes, the description standing in for the picture: a ranking here says "
          "little about a real VLM, and with ten prompts most differences are within the intervals.",
          (("hybrid-kv-kvpress", "SmolLM2-135M on written scenes"),),
          ("pilot_experiments/presses", "pilot_experiments/studies/hybrid_kv", "pilot_experiments/backends"),
          "python -m pilot_experiments hybrid-kv --engine kvpress"),
    Study("real-checkpoints", "Real checkpoints",
          "The studies' mechanics run on real pretrained weights (SmolLM2-135M, a ViT-S) through the "
          "transformers backend.",
          "Text scenes and a small language model, not a vision-language benchmark.",
          (("real-checkpoints", "Mechanics on real weights"),), ("pilot_experiments/backends",),
          "python -m pilot_experiments real-checkpoints"),
)
ROOFLINE_RESULTS = "roofline"  # results/roofline/ holds `python -m pilot_experiments roofline` runs
ROOF_COLOURS = ("#5c6bc0", "#26a69a", "#ef6c00", "#8d6e63")
POINT_STAGES = {"encode": "encoding", "prefill": "prefilling", "decode": "decoding"}
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# Python-Markdown reads a table only after a blank line; results files often put one right under its caption.
TABLE_AFTER_TEXT = re.compile(r"^([^|\n][^\n]*)\n(\|)", re.MULTILINE)


def study_title(slug: str) -> str:
    known = {study.slug: study.title for study in STUDIES}
    return known.get(slug, slug.replace("-", " ").capitalize())


def extra_study(folder: str) -> Study:
    """A results folder no study claims gets a page of its own."""
    return Study(folder, study_title(folder), "", "", ((folder, "Runs"),), ())


def safe_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML disabled (any tag comes out as escaped text) and headings shifted below
    the page's own (a results file's `#` becomes an h4). HTML comments, such as "generated" notes, are dropped."""
    converter = markdown.Markdown(extensions=["tables", "fenced_code", TocExtension(baselevel=4)])
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    return converter.convert(TABLE_AFTER_TEXT.sub(r"\1\n\n\2", HTML_COMMENT.sub("", text)))


@dataclass(frozen=True)
class Plot:
    """A published plot: its file, and for an SVG the dark-scheme variant (a PNG is inverted by the CSS instead)."""

    src: str
    dark_src: str | None


@dataclass(frozen=True)
class StudyRun:
    """One run: a results/<folder>/<stem>.json file and its companions of the same stem."""

    stem: str
    facts: list[tuple[str, str]]
    glance: list[tuple[str, str]]
    headline_html: str | None
    rest_html: str | None
    json_asset: str | None
    images: list[Plot]
    stale: str | None
    on_cpu: bool
    changes: Changes | None = None


@dataclass(frozen=True)
class Changes:
    """How a run's verdicts differ from those of the results file's previous committed version."""

    previous: str  # that version's commit
    lines: list[str]  # "target: old -> new"; empty when no verdict changed


RUN_FACTS = ("study", "preset", "device", "device_name", "torch", "torch_version", "git_commit", "commit", "seed",
             "wall_s", "wall_time_s", "wall_time", "finished_utc", "created", "timestamp", "python")
TABLE_OPEN = re.compile(r"<table>")
TABLE_CLOSE = re.compile(r"</table>")


def split_results(html: str) -> tuple[str, str | None]:
    """The results up to the end of their first table (the headline), and the rest; every table scrolls inside
    its own box instead of widening the page."""
    html = TABLE_CLOSE.sub("</table></div>", TABLE_OPEN.sub('<div class="lvlm-scroll"><table>', html))
    end = html.find("</table></div>")
    if end < 0:
        return html, None
    end += len("</table></div>")
    rest = html[end:].strip()
    return html[:end], rest or None


def verdicts(value: Any, path: tuple[str, ...] = ()) -> dict[str, str]:
    """Every verdict under a results record's targets, by the path of keys that leads to it: a `verdict` string, or
    (results written before verdicts were three-valued) a `met` true or false."""
    if not isinstance(value, dict):
        return {}
    found = {}
    if isinstance(value.get("verdict"), str):
        found[".".join(path)] = value["verdict"]
    elif isinstance(value.get("met"), bool):
        found[".".join(path)] = "met" if value["met"] else "missed"
    for key, item in value.items():
        found.update(verdicts(item, (*path, str(key))))
    return found


def previous_version(root: Path, path: Path) -> tuple[str, dict] | None:
    """The commit and content of the version of results file `path` before the one on disk: HEAD's if the file
    differs from it, else the one before HEAD's last change to it. None without git history or a previous version."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout if result.returncode == 0 else None

    relative = path.relative_to(root).as_posix()
    commits = (git("log", "--format=%h", "-n", "2", "--", relative) or "").split()
    if not commits:
        return None
    if git("show", f"{commits[0]}:./{relative}") != path.read_text(encoding="utf-8"):
        chosen = commits[0]  # the file on disk is a new, uncommitted run
    elif len(commits) > 1:
        chosen = commits[1]
    else:
        return None
    text = git("show", f"{chosen}:./{relative}")
    try:
        return (chosen, json.loads(text)) if text else None
    except json.JSONDecodeError:
        return None


def conclusion_changes(root: Path, path: Path, record: dict) -> Changes | None:
    """What changed in the conclusions since the file's previous version: verdicts that moved, appeared or went."""
    previous = previous_version(root, path)
    if previous is None:
        return None
    commit, old_record = previous
    old = verdicts(old_record.get("metrics", {}).get("targets") if isinstance(old_record, dict) else None)
    new = verdicts(record.get("metrics", {}).get("targets"))
    lines = [f"{key}: {old[key]} → {value}" for key, value in new.items() if key in old and old[key] != value]
    lines += [f"{key}: {value} (not judged this way before)" for key, value in new.items() if key not in old]
    lines += [f"{key}: no longer judged (was {value})" for key, value in old.items() if key not in new]
    return Changes(commit, lines)


def commits_since(root: Path, commit: str, paths: tuple[str, ...]) -> list[str] | None:
    """'<hash> <subject>' of each later commit that changed `paths`, newest first; None when git cannot tell
    (no git, or a shallow clone without the results' commit)."""
    if not paths or not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        return None
    try:
        result = subprocess.run(["git", "-C", str(root), "log", "--format=%h %s", f"{commit}..HEAD", "--", *paths],
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.splitlines() if result.returncode == 0 else None


def glance_of(record: dict) -> list[tuple[str, str]]:
    """What ran, in a few words: preset, device, model size, wall time, commit."""
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    params = metrics.get("params")
    params = params.get("total") if isinstance(params, dict) else params
    facts = [("preset", record.get("preset")), ("device", record.get("device")),
             ("model", f"{params / 1e6:.2f} M parameters" if isinstance(params, int | float) else None),
             ("wall time", f"{record['wall_s']:.0f} s" if isinstance(record.get("wall_s"), int | float) else None),
             ("commit", str(record.get("git_commit", ""))[:12] or None)]
    return [(name, str(value)) for name, value in facts if value]


def study_runs(root: Path, folder_name: str, code: tuple[str, ...] = ()) -> tuple[list[StudyRun], dict[str, Path | str]]:
    """The runs found under results/<folder_name>/ and what to publish with them: files to copy (a Path) and
    generated text (each SVG plot's dark variant, see `pilot_experiments.plot_style`)."""
    folder = root / RESULTS_DIR / folder_name
    if not folder.is_dir():
        return [], {}
    assets: dict[str, Path | str] = {}
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
        record: Any = {}
        json_asset = None
        json_path = folder / f"{stem}.json"
        if json_path.is_file():
            json_asset = f"pilots/{folder_name}/{json_path.name}"
            assets[json_asset] = json_path
            try:
                record = json.loads(json_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("pilot result %s is not valid JSON (%s); publishing it as a file only", json_path, exc)
        record = record if isinstance(record, dict) else {}
        facts = [(key, flat(record[key])) for key in RUN_FACTS if key in record]
        md_path = folder / f"{stem}.md"
        headline, rest = (split_results(safe_markdown(md_path.read_text(encoding="utf-8")))
                          if md_path.is_file() else (None, None))
        images = [publish_plot(image, folder_name, assets) for image in images_by_stem.get(stem, [])]
        commit = str(record.get("git_commit", "")).removesuffix("+dirty")
        later = commits_since(root, commit, code)
        stale = (f"{len(later)} later commit{'s' if len(later) != 1 else ''} changed the code this run documents "
                 f"(results from {commit[:12]}; the latest: {later[0][:90]}); check whether it matters, or re-run "
                 "the study") if later else None
        changes = conclusion_changes(root, json_path, record) if json_path.is_file() and record else None
        runs.append(StudyRun(stem, facts, glance_of(record), headline, rest, json_asset, images, stale,
                             str(record.get("device", "")).lower().startswith("cpu"), changes))
    for image in images_by_stem.get("", []):
        runs.append(StudyRun(image.stem, [], [], None, None, None, [publish_plot(image, folder_name, assets)], None,
                             False))
    return runs, assets


def publish_plot(image: Path, folder_name: str, assets: dict[str, Path | str]) -> Plot:
    """Publish one plot file; an SVG also gets its dark-scheme variant beside it."""
    light = f"pilots/{folder_name}/{image.name}"
    assets[light] = image
    if image.suffix != ".svg":
        return Plot(light, None)
    dark = f"pilots/{folder_name}/{image.stem}-dark.svg"
    assets[dark] = plot_style.dark_variant(image.read_text(encoding="utf-8"))
    return Plot(light, dark)


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
