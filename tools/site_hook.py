"""MkDocs hook: generates the site's pages and downloads from `papers/` and `taxonomy/` at build time.

Every generated page is a virtual markdown file holding only front matter (title, citation tags); its body is
rendered from a jinja2 template in `site_src/templates/` with autoescaping on, so no text from a paper file is
ever parsed as markdown or HTML. Nothing generated is written into the repository.

Events, in build order:
- `on_config` loads the repository (from `extra.data_root`, env `LVLM_DATA_ROOT`) and expands the
  `@taxonomy:<stage>` and `@pilots` placeholders of the navigation;
- `on_files` adds the generated pages, the downloads (`papers.bib`, `papers.csl.json`, `papers.ris`,
  `papers.json`, `feed.xml`), the explore page's data file and the charts;
- `on_page_markdown` points each generated page's "edit" button at the file it comes from;
- `on_page_content` replaces the (empty) body of a generated page by its rendered template;
- `on_serve` also watches the pilot results, so `mkdocs serve` picks up new runs.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import jinja2
import markdown
from markdown.extensions.toc import TocExtension
import yaml
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.utils import get_relative_url

from tools import bibtex, citations, loading, repository
from tools.errors import DataError
from tools.models import Paper

log = logging.getLogger("mkdocs.hooks.site")

DATA_ROOT_ENV = "LVLM_DATA_ROOT"
TEMPLATES_DIR = Path("site_src") / "templates"
RESULTS_DIR = Path("pilot_experiments") / "results"
FEED_SIZE = 50
RECENT_SIZE = 100
HOME_NEWEST = 8
RELATED_SIZE = 5
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
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or that the this to via with without we our "
    "using based towards toward through large vision language model models lvlm lvlms vlm vlms mllm mllms "
    "multimodal visual".split()
)
BIB_ENTRY_START = re.compile(r"\n(?=@)")
BIB_KEY = re.compile(r"@\w+\s*\{\s*([^,\s]+)\s*,")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
WORD = re.compile(r"[a-z][a-z0-9]+(?:-[a-z0-9]+)*")


class SiteError(PluginError):
    """The site cannot be generated; the message says which file or setting to fix."""


# ---------------------------------------------------------------------------------------------------------
# What the hook knows between events
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedPage:
    """A page produced from a template: its source path in the docs tree and what to render it with."""

    src_uri: str
    title: str
    template: str
    context: dict[str, Any]
    edit_path: str
    in_nav: bool = True
    hide: tuple[str, ...] = ("toc",)
    citation: tuple[tuple[str, str], ...] = ()  # citation_* meta tags for the page's <head>


@dataclass
class Build:
    """The repository loaded for one build, and everything derived from it."""

    repo: repository.Repository
    data_root: Path
    env: jinja2.Environment
    pages: dict[str, GeneratedPage] = field(default_factory=dict)
    assets: dict[str, str | bytes] = field(default_factory=dict)
    asset_files: dict[str, Path] = field(default_factory=dict)
    studies: list[str] = field(default_factory=list)


_build: Build | None = None


def paper_url(paper_id: str) -> str:
    return f"papers/{paper_id}/"


def node_url(path: str) -> str:
    return f"taxonomy/{path}/"


# ---------------------------------------------------------------------------------------------------------
# Loading and the navigation
# ---------------------------------------------------------------------------------------------------------


def data_root_of(config: Any) -> Path:
    """The folder holding papers/ and taxonomy/: env `LVLM_DATA_ROOT`, else `extra.data_root`, else the config's folder."""
    config_dir = Path(config.config_file_path).resolve().parent
    configured = os.environ.get(DATA_ROOT_ENV) or config.extra.get("data_root") or "."
    return (config_dir / configured).resolve()


def load(data_root: Path) -> repository.Repository:
    try:
        return repository.load_repository(data_root)
    except DataError as exc:
        problems = "\n".join(f"  {problem}" for problem in exc.problems)
        raise SiteError(
            f"the data under {data_root} has {len(exc.problems)} problem(s); "
            f"run `python -m tools validate` and fix them:\n{problems}"
        ) from None


def stage_nav(repo: repository.Repository, stage: str) -> list[Any]:
    """The navigation of one stage's subtree: its page first (a section index), then its children."""

    def entry(path: str) -> Any:
        node = repo.nodes[path]
        page = f"taxonomy/{path}/index.md"
        if not node.node.children:
            return {nav_title(node.node.name): page}
        return {nav_title(node.node.name): [page] + [entry(f"{path}/{child.id}") for child in node.node.children]}

    if stage not in repo.nodes:
        raise SiteError(f"mkdocs.yml names '@taxonomy:{stage}', but taxonomy/taxonomy.yaml has no stage '{stage}'")
    root = repo.nodes[stage]
    return [f"taxonomy/{stage}/index.md"] + [entry(f"{stage}/{child.id}") for child in root.node.children]


def nav_title(text: str) -> str:
    """Navigation titles are inserted into the theme's HTML as they are, so they are escaped here."""
    return html.escape(text, quote=False)


def expand_nav(items: list[Any], repo: repository.Repository, studies: list[str], used: set[str]) -> list[Any]:
    """Replace `@taxonomy:<stage>` values and `@pilots` entries of the mkdocs.yml navigation."""
    expanded: list[Any] = []
    for item in items:
        if item == "@pilots":
            expanded.extend({nav_title(study_title(study)): f"pilots/{study}.md"} for study in studies)
        elif isinstance(item, dict):
            expanded.append({title: expand_value(value, repo, studies, used) for title, value in item.items()})
        else:
            expanded.append(expand_value(item, repo, studies, used))
    return expanded


def expand_value(value: Any, repo: repository.Repository, studies: list[str], used: set[str]) -> Any:
    if isinstance(value, str) and value.startswith("@taxonomy:"):
        stage = value.removeprefix("@taxonomy:")
        used.add(stage)
        return stage_nav(repo, stage)
    if isinstance(value, list):
        return expand_nav(value, repo, studies, used)
    return value


# ---------------------------------------------------------------------------------------------------------
# Derived data: placements, related papers, downloads
# ---------------------------------------------------------------------------------------------------------


def papers_under(repo: repository.Repository) -> dict[str, list[Paper]]:
    """For every node, the papers placed at it or anywhere below it (each paper once)."""
    under: dict[str, list[Paper]] = {path: [] for path in repo.nodes}
    for paper in repo.papers:
        reached: set[str] = set()
        for placement in paper.taxonomy:
            parts = placement.split("/")
            reached.update("/".join(parts[: depth + 1]) for depth in range(len(parts)))
        for path in reached:
            if path in under:
                under[path].append(paper)
    for papers in under.values():
        papers.sort(key=lambda p: (-p.year, p.display_name.lower()))
    return under


def words_of(paper: Paper) -> set[str]:
    text = f"{paper.name or ''} {paper.title} {paper.summary}".lower()
    return {word for word in WORD.findall(text) if word not in STOPWORDS and len(word) > 2}


def similarity_index(papers: list[Paper]) -> Callable[[Paper], list[tuple[float, Paper]]]:
    """Papers ranked by shared informative words of title and summary (idf-weighted overlap)."""
    words = {paper.id: words_of(paper) for paper in papers}
    document_frequency = Counter(word for bag in words.values() for word in bag)
    count = max(len(papers), 1)
    common = max(3, count // 5)
    idf = {word: math.log(count / df) for word, df in document_frequency.items() if 1 < df <= common}
    postings: dict[str, list[str]] = defaultdict(list)
    for paper_id, bag in words.items():
        for word in bag:
            if word in idf:
                postings[word].append(paper_id)
    by_id = {paper.id: paper for paper in papers}
    norm = {pid: math.sqrt(sum(idf.get(w, 0.0) ** 2 for w in bag)) or 1.0 for pid, bag in words.items()}

    def ranked(paper: Paper) -> list[tuple[float, Paper]]:
        scores: dict[str, float] = defaultdict(float)
        for word in words[paper.id]:
            weight = idf.get(word)
            if weight is None:
                continue
            for other in postings[word]:
                if other != paper.id:
                    scores[other] += weight * weight
        ordered = sorted(scores.items(), key=lambda item: (-item[1] / norm[item[0]], item[0]))
        return [(score / (norm[pid] * norm[paper.id]), by_id[pid]) for pid, score in ordered]

    return ranked


def related_papers(repo: repository.Repository,
                   under: dict[str, list[Paper]]) -> dict[str, tuple[list[Paper], list[Paper]]]:
    """For each paper: up to RELATED_SIZE papers of the same primary node (the most similar first), and up to
    RELATED_SIZE similarly worded papers from elsewhere; the page shows the two lists under their own names."""
    ranked = similarity_index(repo.papers)
    related: dict[str, tuple[list[Paper], list[Paper]]] = {}
    for paper in repo.papers:
        order = ranked(paper)
        rank = {other.id: position for position, (_, other) in enumerate(order)}
        siblings = [other for other in under.get(paper.taxonomy[0], []) if other.id != paper.id]
        siblings.sort(key=lambda other: (rank.get(other.id, len(rank)), -other.year, other.id))
        chosen = siblings[:RELATED_SIZE]
        taken = {other.id for other in chosen} | {paper.id}
        similar = [other for score, other in order if other.id not in taken and score > 0.05][:RELATED_SIZE]
        related[paper.id] = (chosen, similar)
    return related


def authors_text(paper: Paper) -> str:
    text = ", ".join(paper.authors)
    return f"{text} et al." if paper.authors_truncated else text


def paper_links(paper: Paper) -> list[tuple[str, str]]:
    """(label, URL) of every web address of a paper; only http(s) addresses are ever emitted."""
    links = []
    if paper.url:
        links.append(("Paper", str(paper.url)))
    if paper.arxiv:
        links.append((f"arXiv {paper.arxiv}", f"https://arxiv.org/abs/{paper.arxiv}"))
    if paper.doi:
        links.append(("DOI", f"https://doi.org/{paper.doi}"))
    if paper.code:
        links.append(("Code", str(paper.code)))
    if paper.project_page:
        links.append(("Project page", str(paper.project_page)))
    return [(label, checked_url(url)) for label, url in links]


def checked_url(url: str) -> str:
    """A second line of defence behind the models' validation: only http(s) URLs reach an href."""
    if not re.match(r"^https?://", url, re.IGNORECASE):
        raise SiteError(f"refusing to link to '{url[:60]}': only http:// and https:// addresses are allowed")
    return url


def explore_data(repo: repository.Repository) -> dict[str, Any]:
    """The explore page's rows as compact arrays (placements as indexes into `nodes`), without summaries."""
    node_paths = list(repo.nodes)
    node_index = {path: index for index, path in enumerate(node_paths)}
    facets = list(repo.taxonomy.facets)
    rows = []
    for paper in repo.papers:
        rows.append([
            paper.id,
            paper.name or "",
            paper.title,
            authors_text(paper),
            paper.year,
            paper.venue,
            [node_index[path] for path in paper.taxonomy if path in node_index],
            [paper.attributes.get(facet, "") for facet in facets],
            1 if paper.code else 0,
            bibtex.citation_key(paper),
        ])
    return {
        "columns": ["id", "name", "title", "authors", "year", "venue", "nodes", "facets", "code", "key"],
        "nodes": [[path, placement_label(repo, path)] for path in node_paths],
        "facets": facets,
        "rows": rows,
    }


def entries_by_key(library: str) -> dict[str, str]:
    """Split an exported .bib into its entries by citation key (LaTeX-encoding once for both uses is faster)."""
    entries = {}
    for chunk in BIB_ENTRY_START.split(library):
        match = BIB_KEY.match(chunk.strip())
        if match:
            entries[match.group(1)] = chunk.strip() + "\n"
    return entries


def papers_json(repo: repository.Repository) -> str:
    payload = {
        "generated": "by tools/site_hook.py from papers/*.yaml; edit those files, not this one",
        "count": len(repo.papers),
        "papers": [paper.model_dump(mode="json", exclude_defaults=True) for paper in repo.papers],
    }
    return json.dumps(payload, ensure_ascii=False, indent=1) + "\n"


def recently_added(papers: list[Paper]) -> list[Paper]:
    """Latest additions first; within one day, the most recently announced work first."""
    return sorted(papers, key=lambda p: (p.added, p.first_announced or dt.date.min, p.id), reverse=True)


def newest_papers(papers: list[Paper]) -> list[Paper]:
    """The most recently announced work first; papers with no known date are left out."""
    dated = [p for p in papers if p.first_announced]
    return sorted(dated, key=lambda p: (p.first_announced, p.id), reverse=True)


def atom_feed(repo: repository.Repository, site_url: str | None, title: str) -> bytes:
    """An Atom feed of the latest additions, one entry per paper: `published` is when the work was first
    announced (when known), `updated` when it entered the repository. ElementTree escapes every text."""
    base = (site_url or "").rstrip("/") + "/" if site_url else ""
    newest = recently_added(repo.papers)[:FEED_SIZE]
    atom = "http://www.w3.org/2005/Atom"
    ET.register_namespace("", atom)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{atom}}}{tag}", attributes)
        element.text = text
        return element

    feed = ET.Element(f"{{{atom}}}feed")
    sub(feed, "title", f"{title}: recently added papers")
    sub(feed, "subtitle", "Generated by tools/site_hook.py from papers/*.yaml.")
    sub(feed, "id", f"{base}feed.xml" if base else "urn:efficient-lvlm-inference:feed")
    if base:
        sub(feed, "link", rel="self", href=f"{base}feed.xml")
        sub(feed, "link", rel="alternate", href=base)
    updated = newest[0].added if newest else dt.date(1970, 1, 1)
    sub(feed, "updated", f"{updated.isoformat()}T00:00:00Z")
    author = sub(feed, "author")
    sub(author, "name", "Efficient LVLM Inference contributors")
    for paper in newest:
        entry = sub(feed, "entry")
        sub(entry, "title", paper.headline)
        sub(entry, "id", f"{base}{paper_url(paper.id)}" if base else f"urn:efficient-lvlm-inference:paper:{paper.id}")
        if base:
            sub(entry, "link", rel="alternate", href=f"{base}{paper_url(paper.id)}")
        if paper.first_announced:
            sub(entry, "published", f"{paper.first_announced.isoformat()}T00:00:00Z")
        sub(entry, "updated", f"{paper.added.isoformat()}T00:00:00Z")
        for name in paper.authors:
            sub(sub(entry, "author"), "name", name)
        sub(entry, "category", term=paper.stage)
        sub(entry, "summary", f"{paper.venue} {paper.year}. {paper.summary}")
    ET.indent(feed)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(feed, encoding="utf-8") + b"\n"


# ---------------------------------------------------------------------------------------------------------
# Charts (matplotlib SVG, one light and one dark version each)
# ---------------------------------------------------------------------------------------------------------

THEMES = {
    "light": {"text": "#1f2328", "grid": "#d0d7de", "empty": "#f3f4f6"},
    "dark": {"text": "#e6edf3", "grid": "#3d444d", "empty": "#22272e"},
}


def svg_pair(draw: Callable[[Any, dict[str, str]], None], size: tuple[float, float]) -> dict[str, str]:
    """Render `draw(axes, theme)` to SVG text for each theme, with transparent backgrounds and text kept as text."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rendered = {}
    for name, theme in THEMES.items():
        style = {
            "svg.fonttype": "none",
            "font.family": "sans-serif",
            "font.size": 9,
            "text.color": theme["text"],
            "axes.labelcolor": theme["text"],
            "axes.edgecolor": theme["grid"],
            "xtick.color": theme["text"],
            "ytick.color": theme["text"],
            "grid.color": theme["grid"],
            "svg.hashsalt": "efficient-lvlm",
        }
        with plt.rc_context(style):
            figure, axes = plt.subplots(figsize=size)
            draw(axes, theme)
            figure.tight_layout()
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", transparent=True, metadata={"Date": None, "Creator": None})
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


def charts(repo: repository.Repository, under: dict[str, list[Paper]]) -> dict[str, dict[str, str]]:
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


def placement_label(repo: repository.Repository, path: str) -> str:
    """'Keyframe selection › Training-free': a leaf with its parent, since leaf names repeat across the tree."""
    node = repo.nodes[path]
    return f"{repo.nodes[node.parent].node.name} › {node.node.name}" if node.depth >= 2 else node.node.name


def node_label(repo: repository.Repository, path: str) -> str:
    node = repo.nodes[path]
    stage = repo.nodes[node.stage].node.name.split()[0]
    return node.node.name if node.depth == 0 else f"{stage}: {node.node.name}"


# ---------------------------------------------------------------------------------------------------------
# Pilot studies and the roofline
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------------------


def front_matter(page: GeneratedPage) -> str:
    meta: dict[str, Any] = {"title": html.escape(page.title, quote=False)}
    if page.hide:
        meta["hide"] = list(page.hide)
    if page.citation:
        meta["citation"] = [list(tag) for tag in page.citation]
    return "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---\n"


def plan_pages(build: Build, config: Any) -> None:
    """Decide every generated page and asset of the site."""
    repo = build.repo
    under = papers_under(repo)
    related = related_papers(repo, under)
    added = recently_added(repo.papers)
    newest = newest_papers(repo.papers)
    stages = [repo.nodes[stage.id] for stage in repo.taxonomy.stages]
    counts = {
        "papers": len(repo.papers),
        "nodes": len(repo.nodes),
        "with_code": sum(1 for p in repo.papers if p.code),
        "venues": len({p.venue for p in repo.papers}),
        "years": (min((p.year for p in repo.papers), default=0), max((p.year for p in repo.papers), default=0)),
    }
    common = {"repo": repo, "under": under, "stages": stages, "counts": counts,
              "repo_url": (config.repo_url or "").rstrip("/")}
    relative_path = lambda path: path.resolve().relative_to(build.data_root).as_posix()  # noqa: E731

    def add(page: GeneratedPage) -> None:
        build.pages[page.src_uri] = page

    library = bibtex.export_bibtex(repo.papers)
    entries = entries_by_key(library)

    add(GeneratedPage("index.md", "Home", "home.html",
                      {**common, "newest": newest[:HOME_NEWEST], "added": added[:HOME_NEWEST]},
                      "site_src/templates/home.html", hide=("toc", "navigation")))
    add(GeneratedPage("taxonomy/index.md", "Taxonomy", "taxonomy.html", common, "taxonomy/taxonomy.yaml"))
    for path, node in repo.nodes.items():
        ancestors = [repo.nodes["/".join(path.split("/")[: d + 1])] for d in range(node.depth)]
        children = [repo.nodes[f"{path}/{child.id}"] for child in node.node.children]
        add(GeneratedPage(f"taxonomy/{path}/index.md", node.node.name, "node.html",
                          {**common, "node": node, "ancestors": ancestors, "children": children,
                           "papers": under[path]}, "taxonomy/taxonomy.yaml"))
    for paper in repo.papers:
        placements = [repo.nodes[p] for p in paper.taxonomy if p in repo.nodes]
        facets = [(repo.taxonomy.facets[f], v) for f, v in sorted(paper.attributes.items()) if f in repo.taxonomy.facets]
        add(GeneratedPage(f"papers/{paper.id}.md", paper.display_name, "paper.html",
                          {**common, "paper": paper, "placements": placements, "facets": facets,
                           "links": paper_links(paper), "authors": authors_text(paper),
                           "bibtex": entries[bibtex.citation_key(paper)], "same_node": related[paper.id][0], "similar": related[paper.id][1],
                           "csl": json.dumps(citations.csl_item(paper), ensure_ascii=False, indent=2),
                           "ris": citations.ris_entry(paper)},
                          relative_path(repo.paths[paper.id]), in_nav=False,
                          hide=("navigation", "toc"), citation=tuple(citations.citation_meta(paper))))
    add(GeneratedPage("explore.md", "Explore", "explore.html",
                      {**common, "venues": sorted({p.venue for p in repo.papers}, key=str.lower),
                       "facets": repo.taxonomy.facets}, "site_src/templates/explore.html", hide=("navigation", "toc")))
    add(GeneratedPage("statistics.md", "Statistics", "statistics.html",
                      {**common, "venue_counts": Counter(p.venue for p in repo.papers).most_common()},
                      "site_src/templates/statistics.html"))
    add(GeneratedPage("recent.md", "What's new", "recent.html",
                      {**common, "newest": newest[:RECENT_SIZE], "added": added[:RECENT_SIZE]},
                      "site_src/templates/recent.html"))
    benchmark_stage = next((s for s in stages if s.kind == "benchmark"), None)
    add(GeneratedPage("benchmarks.md", "Benchmarks", "benchmarks.html",
                      {**common, "stage": benchmark_stage,
                       "domains": [repo.nodes[f"{benchmark_stage.path}/{c.id}"] for c in benchmark_stage.node.children]
                       if benchmark_stage else []},
                      "site_src/templates/benchmarks.html"))

    results = build.data_root / RESULTS_DIR
    studies = list(STUDIES) + sorted(p.name for p in results.glob("*") if p.is_dir() and p.name not in STUDIES
                                     and p.name != ROOFLINE_RESULTS and not p.name.startswith((".", "_")))
    summaries = []
    for study in studies:
        runs, assets = study_runs(results, study)
        build.asset_files.update(assets)
        summaries.append((study, study_title(study), STUDIES.get(study, ("", ""))[1], runs))
        add(GeneratedPage(f"pilots/{study}.md", study_title(study), "pilot_study.html",
                          {**common, "study": study, "title": study_title(study),
                           "about": STUDIES.get(study, ("", ""))[1], "runs": runs},
                          f"pilot_experiments/results/{study}", hide=()))
    add(GeneratedPage("pilots/index.md", "Pilot studies", "pilots.html", {**common, "studies": summaries},
                      "site_src/templates/pilots.html"))

    roofline, chart, missing = roofline_chart()
    if roofline:
        build.assets.update({f"assets/charts/roofline-{theme}.svg": svg for theme, svg in roofline.items()})
    measured, assets = study_runs(results, ROOFLINE_RESULTS)
    build.asset_files.update(assets)
    add(GeneratedPage("roofline.md", "Roofline", "roofline.html",
                      {**common, "chart": chart, "missing": missing, "runs": measured},
                      "pilot_experiments/roofline.py", hide=()))

    for name, pair in charts(repo, under).items():
        for theme, svg in pair.items():
            build.assets[f"assets/charts/{name}-{theme}.svg"] = svg
    site_name = config.site_name
    build.assets["papers.bib"] = library
    build.assets["papers.json"] = papers_json(repo)
    build.assets["papers.csl.json"] = citations.csl_json(repo.papers)
    build.assets["papers.ris"] = citations.ris(repo.papers)
    build.assets["feed.xml"] = atom_feed(repo, config.site_url, site_name)
    build.assets["assets/data/explore.json"] = json.dumps(explore_data(repo), ensure_ascii=False,
                                                          separators=(",", ":"))
    build.studies = studies


def template_environment(config_dir: Path) -> jinja2.Environment:
    folder = config_dir / TEMPLATES_DIR
    if not folder.is_dir():
        raise SiteError(f"the page templates are missing: {folder} does not exist")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(paper_url=paper_url, node_url=node_url)
    env.filters["http_only"] = lambda url: checked_url(str(url))
    return env


# ---------------------------------------------------------------------------------------------------------
# MkDocs events
# ---------------------------------------------------------------------------------------------------------


def on_config(config: Any) -> Any:
    global _build
    data_root = data_root_of(config)
    config_dir = Path(config.config_file_path).resolve().parent
    repo = load(data_root)
    build = Build(repo=repo, data_root=data_root, env=template_environment(config_dir))
    plan_pages(build, config)
    used: set[str] = set()
    config.nav = expand_nav(config.nav or [], repo, build.studies, used)
    missing = [stage.id for stage in repo.taxonomy.stages if stage.id not in used]
    if missing:
        log.warning("mkdocs.yml's nav has no '@taxonomy:%s' entry; add one so the stage gets a tab",
                    "', '@taxonomy:".join(missing))
    _build = build
    log.info("site: %d papers, %d taxonomy nodes from %s", len(repo.papers), len(repo.nodes), data_root)
    return config


def on_files(files: Files, config: Any) -> Files:
    build = current_build()
    for page in build.pages.values():
        existing = files.get_file_from_path(page.src_uri)
        if existing is not None:
            raise SiteError(f"site_src/docs/{page.src_uri} clashes with a generated page; rename or delete it")
        inclusion = InclusionLevel.INCLUDED if page.in_nav else InclusionLevel.NOT_IN_NAV
        files.append(File.generated(config, page.src_uri, content=front_matter(page), inclusion=inclusion))
    for src_uri, content in build.assets.items():
        files.append(File.generated(config, src_uri, content=content))
    for src_uri, path in build.asset_files.items():
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown_text: str, page: Any, config: Any, files: Files) -> str:
    generated = current_build().pages.get(page.file.src_uri)
    if generated is not None and config.repo_url:
        page.edit_url = f"{config.repo_url.rstrip('/')}/edit/main/{generated.edit_path}"
        if generated.edit_path.endswith("/") or "." not in generated.edit_path.rsplit("/", 1)[-1]:
            page.edit_url = f"{config.repo_url.rstrip('/')}/tree/main/{generated.edit_path}"
    return markdown_text


def on_page_content(content: str, page: Any, config: Any, files: Files) -> str:
    build = current_build()
    generated = build.pages.get(page.file.src_uri)
    if generated is None:
        return content
    here = page.url

    def link(target: str) -> str:
        """`target` (a site path like 'papers/fastv-2024/') relative to the page being rendered."""
        return get_relative_url(target or "./", here)

    template = build.env.get_template(generated.template)
    return template.render(**generated.context, link=link)


def on_serve(server: Any, config: Any, builder: Callable[..., Any]) -> Any:
    """Watch the data actually built from (it may live outside the config's folder) and the pilot results."""
    root = data_root_of(config)
    for folder in (root / loading.PAPERS_DIR, root / "taxonomy", root / RESULTS_DIR):
        if folder.is_dir():
            server.watch(str(folder))
    return server


def current_build() -> Build:
    if _build is None:
        raise SiteError("the site hook ran out of order: on_config did not load the repository")
    return _build
