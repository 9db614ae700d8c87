"""Every generated page and asset of the site, decided from the data: `plan` fills a `Site`, `render` turns one
page into HTML. Plain Python with jinja2 templates; the MkDocs adapter (tools/site_hook.py) only hands the
results to MkDocs, so moving to another site builder means rewriting that adapter alone."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from tools import bibtex, citations, repository
from tools.errors import DataError, SiteError
from tools.results import number_text, records, to_csv, to_json
from tools.site.charts import charts
from tools.site.downloads import entries_by_key, papers_json
from tools.site.explore import explore_data, explore_summaries
from tools.site.feed import atom_feed, newest_papers, paper_url, recently_added
from tools.site.papers import authors_text, checked_url, paper_links, papers_under, related_papers
from tools.site.pilots import RESULTS_DIR, ROOFLINE_RESULTS, STUDIES, extra_study, roofline_chart, study_runs
from tools.site.results import (
    EFFICIENCY_LABELS,
    Comparison,
    comparisons,
    pareto_charts,
    rows_by_paper,
    slug,
    source_label,
    table_name,
)

TEMPLATES_DIR = Path("site_src") / "templates"
RECENT_SIZE = 100
HOME_NEWEST = 8


def node_url(path: str) -> str:
    return f"taxonomy/{path}/"


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
class Site:
    """The repository loaded for one build, and everything derived from it."""

    repo: repository.Repository
    data_root: Path
    env: jinja2.Environment
    pages: dict[str, GeneratedPage] = field(default_factory=dict)
    assets: dict[str, str | bytes] = field(default_factory=dict)
    asset_files: dict[str, Path] = field(default_factory=dict)
    studies: list[str] = field(default_factory=list)

    def publish(self, assets: dict[str, Path | str]) -> None:
        """Add files to copy (a Path) and generated text to the site's output."""
        for name, content in assets.items():
            if isinstance(content, Path):
                self.asset_files[name] = content
            else:
                self.assets[name] = content


@dataclass(frozen=True)
class SiteConfig:
    """What the generator needs from the site configuration."""

    site_name: str
    site_url: str | None
    repo_url: str | None


def load(data_root: Path) -> repository.Repository:
    try:
        return repository.load_repository(data_root)
    except DataError as exc:
        problems = "\n".join(f"  {problem}" for problem in exc.problems)
        raise SiteError(
            f"the data under {data_root} has {len(exc.problems)} problem(s); "
            f"run `python -m tools validate` and fix them:\n{problems}"
        ) from None


def generate(data_root: Path, config_dir: Path, config: SiteConfig) -> Site:
    """Load the data under `data_root` and plan every page and asset."""
    site = Site(repo=load(data_root), data_root=data_root, env=template_environment(config_dir))
    plan(site, config)
    return site


def render(site: Site, page: GeneratedPage, link: Callable[[str], str]) -> str:
    """The page's HTML; `link` turns a site path ('papers/fastv-2024/') into a link from this page."""
    return site.env.get_template(page.template).render(**page.context, link=link)


def front_matter(page: GeneratedPage) -> str:
    meta: dict[str, Any] = {"title": html.escape(page.title, quote=False)}
    if page.hide:
        meta["hide"] = list(page.hide)
    if page.citation:
        meta["citation"] = [list(tag) for tag in page.citation]
    return "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---\n"


def plan(site: Site, config: SiteConfig) -> None:
    """Decide every generated page and asset of the site."""
    repo = site.repo
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
    relative_path = lambda path: path.resolve().relative_to(site.data_root).as_posix()  # noqa: E731

    def add(page: GeneratedPage) -> None:
        site.pages[page.src_uri] = page

    library = bibtex.export_bibtex(repo.papers)
    entries = entries_by_key(library)
    result_groups = comparisons(repo.papers)
    result_rows = rows_by_paper(result_groups)

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
        facets = [(repo.taxonomy.facets[f], v) for f, v in sorted(paper.attributes.items())
                  if f in repo.taxonomy.facets]
        add(GeneratedPage(f"papers/{paper.id}.md", paper.display_name, "paper.html",
                          {**common, "paper": paper, "placements": placements, "facets": facets,
                           "links": paper_links(paper), "authors": authors_text(paper),
                           "bibtex": entries[bibtex.citation_key(paper)],
                           "same_node": related[paper.id][0], "similar": related[paper.id][1],
                           "csl": json.dumps(citations.csl_item(paper), ensure_ascii=False, indent=2),
                           "results": result_rows.get(paper.id, []),
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
    plan_results(site, common, result_groups, add)
    benchmark_stage = next((s for s in stages if s.kind == "benchmark"), None)
    add(GeneratedPage("benchmarks.md", "Benchmarks", "benchmarks.html",
                      {**common, "stage": benchmark_stage,
                       "domains": [repo.nodes[f"{benchmark_stage.path}/{c.id}"] for c in benchmark_stage.node.children]
                       if benchmark_stage else []},
                      "site_src/templates/benchmarks.html"))

    results = site.data_root / RESULTS_DIR
    claimed = {folder for study in STUDIES for folder, _ in study.folders} | {ROOFLINE_RESULTS}
    extra = sorted(p.name for p in results.glob("*") if p.is_dir() and p.name not in claimed
                   and not p.name.startswith((".", "_")))
    summaries = []
    for study in [*STUDIES, *map(extra_study, extra)]:
        groups = []
        for folder, label in study.folders:
            runs, assets = study_runs(site.data_root, folder, study.code)
            site.publish(assets)
            groups.append((folder, label, runs))
        count = sum(len(runs) for _, _, runs in groups)
        summaries.append((study, count))
        add(GeneratedPage(f"pilots/{study.slug}.md", study.title, "pilot_study.html",
                          {**common, "study": study, "groups": groups, "count": count},
                          f"pilot_experiments/results/{study.folders[0][0]}", hide=()))
    add(GeneratedPage("pilots/index.md", "Pilot studies", "pilots.html", {**common, "studies": summaries},
                      "site_src/templates/pilots.html"))

    roofline, chart, missing = roofline_chart()
    if roofline:
        site.assets.update({f"assets/charts/roofline-{theme}.svg": svg for theme, svg in roofline.items()})
    measured, assets = study_runs(site.data_root, ROOFLINE_RESULTS, ("pilot_experiments/roofline.py",))
    site.publish(assets)
    add(GeneratedPage("roofline.md", "Roofline", "roofline.html",
                      {**common, "chart": chart, "missing": missing, "runs": measured},
                      "pilot_experiments/roofline.py", hide=()))

    for name, pair in charts(repo, under).items():
        for theme, svg in pair.items():
            site.assets[f"assets/charts/{name}-{theme}.svg"] = svg
    site_name = config.site_name
    site.assets["papers.bib"] = library
    site.assets["papers.json"] = papers_json(repo)
    site.assets["papers.csl.json"] = citations.csl_json(repo.papers)
    site.assets["papers.ris"] = citations.ris(repo.papers)
    site.assets["feed.xml"] = atom_feed(repo, config.site_url, site_name)
    site.assets["assets/data/explore.json"] = json.dumps(explore_data(repo), ensure_ascii=False,
                                                          separators=(",", ":"))
    site.assets["assets/data/summaries.json"] = json.dumps(explore_summaries(repo), ensure_ascii=False,
                                                            separators=(",", ":"))
    site.studies = [study.slug for study in STUDIES] + extra


def plan_results(site: Site, common: dict[str, Any], groups: list[Comparison],
                 add: Callable[[GeneratedPage], None]) -> None:
    """The reported-results index, one page per comparable setting, their Pareto charts and the downloads."""
    pareto = pareto_charts(groups)
    for chart in pareto.values():
        for theme, svg in chart["svg"].items():
            site.assets[f"assets/charts/{chart['slug']}-{theme}.svg"] = svg
    by_model: dict[str, list[Comparison]] = {}
    for group in groups:
        by_model.setdefault(group.model, []).append(group)
    names = {paper.id: paper.display_name for paper in site.repo.papers}
    totals = {"methods": len({row.paper.id for group in groups for row in group.rows}),
              "rows": sum(len(group.rows) for group in groups),
              "numbers": sum(len(row.result.scores) for group in groups for row in group.rows)}
    add(GeneratedPage("results/index.md", "Reported results", "results.html",
                      {**common, "groups": groups, "by_model": list(by_model.items()), "pareto": pareto,
                       "totals": totals}, "site_src/templates/results.html", hide=("toc",)))
    for group in groups:
        chart = pareto.get(group.model)
        add(GeneratedPage(f"results/{group.slug}.md", f"{group.model}, {group.setting}", "results_setting.html",
                          {**common, "group": group, "names": names, "efficiency_labels": EFFICIENCY_LABELS,
                           "chart_slug": chart["slug"] if chart else None},
                          "site_src/templates/results_setting.html", in_nav=False, hide=("toc", "navigation")))
    rows = records(site.repo.papers)
    site.assets["results.csv"] = to_csv(rows)
    site.assets["results.json"] = to_json(rows)


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
    env.filters["number"] = number_text
    env.filters["source_label"] = lambda url: source_label(str(url))
    env.filters["slug"] = slug
    env.filters["table_name"] = table_name
    return env
