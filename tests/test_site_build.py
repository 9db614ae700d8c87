"""The generated site, built once from the fixture repository (tests/fixtures/site/) with `--strict`."""

from __future__ import annotations

import datetime as dt

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import bibtexparser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.site.sitebuild import HOSTILE_TITLE, ROOT, BuiltSite, build_fixture_site, copy_fixture
from tools import bibtex, repository
from tools.errors import SiteError
from tools.site import pages
from tools.site.papers import checked_url
from tools.errors import DataError

pytestmark = pytest.mark.slow

THEME_NOOP_LINK = "javascript:void(0)"  # the theme's own placeholder link (palette toggle), no user data


@pytest.fixture(scope="session")
def site() -> BuiltSite:
    return build_fixture_site()




class TextCollector(HTMLParser):
    """Collects the text inside elements, and every tag name and attribute the document really has."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> TextCollector:
    collector = TextCollector()
    collector.feed(html)
    return collector


def all_html(site: BuiltSite) -> dict[str, str]:
    return {str(p.relative_to(site.site_dir)): p.read_text(encoding="utf-8") for p in site.site_dir.rglob("*.html")}


def test_script_title_never_becomes_markup_in_any_page(site):
    pages = all_html(site)
    assert len(pages) > 40
    for name, html in pages.items():
        assert "<script>alert" not in html, name
        assert "<img src=x" not in html, name
        document = parse(html)
        for tag, attrs in document.tags:
            for attribute, value in attrs:
                assert not attribute.startswith("on"), f"{name}: <{tag} {attribute}=...> was injected"
                if attribute in {"href", "src"} and value and value != THEME_NOOP_LINK:
                    assert not value.strip().lower().startswith("javascript:"), f"{name}: {attribute}={value}"


def test_script_title_shows_as_text_on_its_page(site):
    document = parse(site.html("papers/script-title-2024/"))
    text = "".join(document.text)
    assert HOSTILE_TITLE in text
    assert "<b>Mallory</b> Hacker" in text
    assert "<script>alert(3)</script> A summary" in text


def test_valid_but_markup_like_text_is_shown_exactly(site):
    paper = site.paper("tricky-markup-2024")
    text = "".join(parse(site.html("papers/tricky-markup-2024/")).text)
    assert paper.title in text  # includes a half-open <img ... tag and {{ 7*7 }}, shown as written
    assert paper.summary in text
    assert 'Ada "Quote" O\'Hara' in text
    html = site.html("papers/tricky-markup-2024/")
    assert 'href="https://example.org/papers?id=1&amp;view=full"' in html


def test_feed_lists_newest_additions_first_with_text_escaped(site):
    tree = ET.parse(site.site_dir / "feed.xml")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    entries = tree.getroot().findall("a:entry", ns)
    expected = sorted(site.repo.papers, key=lambda p: (p.added, p.first_announced or dt.date.min, p.id),
                      reverse=True)
    assert [e.find("a:id", ns).text.rstrip("/").rsplit("/", 1)[-1] for e in entries] == [p.id for p in expected]
    by_id = {p.id: p for p in site.repo.papers}
    for element in entries:
        paper = by_id[element.find("a:id", ns).text.rstrip("/").rsplit("/", 1)[-1]]
        assert element.find("a:updated", ns).text == f"{paper.added.isoformat()}T00:00:00Z"
        published = element.find("a:published", ns)
        assert (published.text if published is not None else None) == (
            f"{paper.first_announced.isoformat()}T00:00:00Z" if paper.first_announced else None)
    fastv = next(e for e in entries if e.find("a:id", ns).text.endswith("/papers/fastv-2024/"))
    assert fastv.find("a:published", ns).text == "2024-03-01T00:00:00Z"  # the month of arXiv 2403.06764
    titles = {e.find("a:id", ns).text.rstrip("/").rsplit("/", 1)[-1]: e.find("a:title", ns).text for e in entries}
    assert titles["visionzip-2024"].startswith("VisionZip: Longer is Better")  # the name is not printed twice
    assert titles["fastv-2024"].startswith("FastV: An Image Is Worth 1/2 Tokens")
    hostile = next(e for e in entries if e.find("a:id", ns).text.endswith("/papers/script-title-2024/"))
    assert hostile.find("a:title", ns).text.endswith(HOSTILE_TITLE)
    assert hostile.find("a:link", ns).get("href") == "http://127.0.0.1/papers/script-title-2024/"


def test_whats_new_lists_papers_by_announcement_and_additions_by_date(site):
    html = site.html("recent/")
    newest = html.split('id="newest-papers"', 1)[1].split('id="recently-added"', 1)[0]
    shown = re.findall(r'href="[^"]*papers/([a-z0-9-]+)/"', newest)
    dated = sorted((p for p in site.repo.papers if p.first_announced), key=lambda p: (p.first_announced, p.id),
                   reverse=True)
    assert shown == [p.id for p in dated]
    home = site.html("")
    assert 'id="newest"' in home and 'id="recently-added"' in home


def test_paper_pages_carry_citation_tags_for_reference_managers(site):
    html = site.html("papers/fastv-2024/")
    head = html.split("</head>", 1)[0]
    tags = re.findall(r'<meta name="(citation_[a-z_]+)" content="([^"]*)"', head)
    fastv = site.paper("fastv-2024")
    assert [value for name, value in tags if name == "citation_author"] == fastv.authors
    assert ("citation_title", fastv.title) in tags and ("citation_arxiv_id", "2403.06764") in tags
    assert ("citation_pdf_url", "https://arxiv.org/pdf/2403.06764") in tags
    assert ("citation_conference_title", "ECCV") in tags and ("citation_publication_date", "2024") in tags
    assert ("/issues/new?template=correct-paper.yml&amp;title=%5Bcorrection%5D%20fastv-2024&amp;paper=fastv-2024"
            in html), "the paper page links to the correction form with its id filled in"
    hostile = site.html("papers/script-title-2024/").split("</head>", 1)[0]
    assert '<meta name="citation_title" content="&lt;script&gt;alert(1)&lt;/script&gt;">' in hostile


def test_collection_downloads_in_csl_json_and_ris(site):
    keys = sorted(bibtex.citation_key(p) for p in site.repo.papers)
    items = json.loads((site.site_dir / "papers.csl.json").read_text(encoding="utf-8"))
    assert sorted(item["id"] for item in items) == keys
    fastv = next(item for item in items if item["id"] == bibtex.citation_key(site.paper("fastv-2024")))
    assert fastv["author"][0] == {"given": "Liang", "family": "Chen"} and fastv["type"] == "paper-conference"
    ris = (site.site_dir / "papers.ris").read_text(encoding="utf-8")
    assert sorted(re.findall(r"^ID  - (\S+)$", ris, flags=re.MULTILINE)) == keys
    assert ris.count("TY  - ") == ris.count("ER  -") == len(keys)
    assert "AU  - Chen, Liang" in ris


def test_papers_json_holds_every_paper(site):
    payload = json.loads((site.site_dir / "papers.json").read_text(encoding="utf-8"))
    assert payload["count"] == len(site.repo.papers)
    assert sorted(p["id"] for p in payload["papers"]) == sorted(p.id for p in site.repo.papers)
    fastv = next(p for p in payload["papers"] if p["id"] == "fastv-2024")
    assert fastv["arxiv"] == "2403.06764"


def test_papers_bib_parses_to_one_entry_per_paper(site):
    library = bibtexparser.parse_string((site.site_dir / "papers.bib").read_text(encoding="utf-8"))
    assert not library.failed_blocks
    assert sorted(e.key for e in library.entries) == sorted(bibtex.citation_key(p) for p in site.repo.papers)


def test_explore_data_rows_match_the_repository(site):
    data = json.loads((site.site_dir / "assets" / "data" / "explore.json").read_text(encoding="utf-8"))
    rows = {row[0]: dict(zip(data["columns"], row)) for row in data["rows"]}
    assert set(rows) == {p.id for p in site.repo.papers}
    for paper in site.repo.papers:
        row = rows[paper.id]
        assert row["title"] == paper.title and row["year"] == paper.year and row["venue"] == paper.venue
        assert [data["nodes"][i][0] for i in row["nodes"]] == paper.taxonomy
        assert row["code"] == (1 if paper.code else 0)
        assert row["key"] == bibtex.citation_key(paper)
    summaries = json.loads((site.site_dir / "assets" / "data" / "summaries.json").read_text(encoding="utf-8"))
    assert summaries == {p.id: p.summary for p in site.repo.papers}


def test_every_node_has_a_page_listing_its_subtree(site):
    for path, node in site.repo.nodes.items():
        html = site.html(f"taxonomy/{path}/")
        expected = [p for p in site.repo.papers if any(t == path or t.startswith(path + "/") for t in p.taxonomy)]
        assert f"Papers ({len(expected)})" in html, path
        for paper in expected:
            assert f"papers/{paper.id}/" in html, (path, paper.id)


def test_paper_page_has_links_bibtex_related_and_edit_button(site):
    html = site.html("papers/fastv-2024/")
    assert 'href="https://arxiv.org/abs/2403.06764"' in html
    assert 'href="https://doi.org/10.1007/978-3-031-73004-7_2"' in html
    assert 'href="https://github.com/pkunlp-icler/FastV"' in html
    assert re.search(r'href="https://github\.com/[^"]+/edit/main/papers/fastv-2024\.yaml"', html)
    assert "@inproceedings{chen2024fastv" in html or "{chen2024fastv," in html
    related = html.split('id="related"')[1]
    same_node = related.split('id="same-node"')[1].split('id="similar"')[0]
    assert "../sparsevlm-2024/" in same_node or "../pyramiddrop-2024/" in same_node
    assert '../../taxonomy/prefilling/token-compression/attention-guided/' in html


def test_every_paper_page_shows_its_own_bibtex_entry(site):
    import html as html_module

    for paper in site.repo.papers:
        page = site.html(f"papers/{paper.id}/")
        code = page.split('class="highlight lvlm-bibtex"><pre><code>', 1)[1].split("</code>", 1)[0]
        assert html_module.unescape(code) == bibtex.paper_bibtex(paper), paper.id


def test_navigation_has_a_tab_per_stage(site):
    html = site.html("")
    tabs = re.findall(r'class="md-tabs__link[^"]*"[^>]*>\s*([^<]+?)\s*<', html)
    for name in ["Encoding", "Prefilling", "Decoding", "Serving", "Explore", "Pilot studies"]:
        assert name in tabs


def test_pilot_pages_show_results_or_say_not_yet_run(site):
    serving = site.html("pilots/serving/")
    assert "<table>" in serving and "monolithic" in serving
    assert "&lt;script&gt;alert(5)&lt;/script&gt;" in serving  # raw HTML in a results table stays text
    assert (site.site_dir / "pilots" / "serving" / "smoke-cpu.json").is_file()
    assert "Run it with <code>python -m pilot_experiments serving --preset cpu</code>" in serving  # the study's own command
    assert "Not yet run" in site.html("pilots/hybrid-kv/")


def test_roofline_page_draws_the_chart_or_says_why_not(site):
    html = site.html("roofline/")
    chart = site.site_dir / "assets" / "charts" / "roofline-light.svg"
    if chart.exists():
        assert "roofline-dark.svg#only-dark" in html
    else:
        assert "Chart not available yet" in html and "pilot_experiments.roofline" in html


def test_statistics_charts_exist_in_light_and_dark(site):
    html = site.html("statistics/")
    for name in ["papers-per-year", "papers-per-node", "node-year-heatmap", "venues", "code-share"]:
        for theme in ["light", "dark"]:
            svg = (site.site_dir / "assets" / "charts" / f"{name}-{theme}.svg").read_text(encoding="utf-8")
            assert svg.lstrip().startswith("<?xml") and "<svg" in svg
            assert f"{name}-{theme}.svg#only-{theme}" in html


def test_no_page_loads_anything_from_another_host(site):
    for name, html in all_html(site).items():
        for tag, attrs in parse(html).tags:
            values = dict(attrs)
            if tag in {"script", "img"} and values.get("src"):
                assert not re.match(r"^(https?:)?//", values["src"]), (name, values["src"])
            if tag == "link" and values.get("rel") in {"stylesheet", "preload"}:
                assert not re.match(r"^(https?:)?//", values.get("href", "")), (name, values.get("href"))


def test_javascript_urls_are_refused_by_validation(tmp_path):
    copy_fixture(tmp_path)
    text = (tmp_path / "papers" / "fastv-2024.yaml").read_text(encoding="utf-8")
    text = text.replace("code: https://github.com/pkunlp-icler/FastV", "code: javascript:alert(1)")
    (tmp_path / "papers" / "fastv-2024.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        repository.load_repository(tmp_path)
    assert any(problem.field == "code" for problem in caught.value.problems)


def test_the_hook_refuses_to_link_anything_but_http():
    assert checked_url("https://example.org/a") == "https://example.org/a"
    for url in ["javascript:alert(1)", "JAVASCRIPT:alert(1)", "data:text/html,x", " https://x.org"]:
        with pytest.raises(SiteError):
            checked_url(url)


@settings(max_examples=60, deadline=None)
@given(title=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=80)
       .filter(lambda s: s.strip() == s and s.strip()))
def test_paper_template_shows_any_title_as_text(title):
    repo = build_fixture_site().repo
    paper = build_fixture_site().paper("fastv-2024").model_copy(update={"title": title, "name": None})
    env = pages.template_environment(ROOT)
    html = env.get_template("paper.html").render(
        repo=repo, under={}, stages=[], counts={}, paper=paper, placements=[], facets=[], links=[],
        authors="A B", bibtex="@misc{x}", csl="{}", ris="TY  - GEN", same_node=[], similar=[], results=[],
        link=lambda target: target,
        repo_url="",
    )
    document = parse(html)
    h1 = html.split("<h1>", 1)[1].split("</h1>", 1)[0]
    assert "".join(parse(h1).text) == title
    assert [tag for tag, _ in document.tags if tag in {"script", "img", "iframe"}] == []


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url: str) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode("utf-8")
    except (urllib.error.URLError, OSError):
        return None


def copy_repository(target: Path) -> Path:
    """A temporary copy of the repository: the fixture data with the real config, templates and tools."""
    copy_fixture(target)
    for item in ["mkdocs.yml", "CONTRIBUTING.md"]:
        shutil.copy(ROOT / item, target / item)
    shutil.copytree(ROOT / "site_src", target / "site_src")
    shutil.copytree(ROOT / "tools", target / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_copy_of_the_repository_builds_strictly_and_serve_rebuilds_on_a_yaml_edit(tmp_path):
    """In a temporary copy (data root = the copy): `mkdocs serve --strict` builds with no warning, and an edited
    paper file shows up on the served page without a restart."""
    import time

    copy = copy_repository(tmp_path / "copy")
    port = free_port()
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(copy)}
    env.pop("LVLM_DATA_ROOT", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mkdocs", "serve", "--strict", "--dev-addr", f"127.0.0.1:{port}"],
            cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    url = f"http://127.0.0.1:{port}/efficient-lvlm-inference/papers/fastv-2024/"
    try:
        deadline = time.monotonic() + 120
        page = None
        while page is None and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
            page = fetch(url)
        output = log_path.read_text()
        assert page is not None and "Observes that deep layers" in page, output[-3000:]
        assert "WARNING" not in output
        papers = len(list((copy / "papers").glob("*.yaml")))
        assert f"site: {papers} papers" in output

        paper_file = copy / "papers" / "fastv-2024.yaml"
        marker = "Rewritten summary that the live server must pick up after an edit."
        text = paper_file.read_text(encoding="utf-8")
        start, end = text.index("summary: >-"), text.index("sources:")
        paper_file.write_text(text[:start] + f"summary: {marker}\n" + text[end:], encoding="utf-8")
        while marker not in (page or "") and time.monotonic() < deadline:
            time.sleep(0.5)
            page = fetch(url)
        assert marker in (page or ""), "the edited paper was not rebuilt within the deadline"
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_a_pilot_svg_plot_follows_the_colour_scheme(site):
    from pilot_experiments import plot_style

    serving = site.html("pilots/serving/")
    assert 'src="smoke-cpu.svg#only-light"' in serving
    assert 'src="smoke-cpu-dark.svg#only-dark"' in serving
    dark = (site.site_dir / "pilots" / "serving" / "smoke-cpu-dark.svg").read_text(encoding="utf-8")
    assert plot_style.DARK["text"] in dark and plot_style.DARK["grid"] in dark
    assert plot_style.LIGHT["text"] not in dark and "#1f77b4" in dark  # ink swapped, data colours kept


def test_pilot_page_opens_with_a_glance_and_scrolls_wide_tables(site):
    serving = site.html("pilots/serving/")
    glance = serving.split('class="admonition abstract lvlm-glance"', 1)[1].split("</div>", 1)[0]
    assert "preset smoke" in glance and "device cpu" in glance and "Measured on a CPU" in glance
    assert serving.index("lvlm-glance") < serving.index("<table>")
    assert '<div class="lvlm-scroll"><table>' in serving and "<table>" not in serving.replace(
        '<div class="lvlm-scroll"><table>', "")


def test_results_markdown_reads_a_table_right_under_its_caption() -> None:
    from tools.site.pilots import safe_markdown, split_results

    html = safe_markdown("Goodput per family:\n| a | b |\n|---|---|\n| 1 | 2 |\n\nMore:\n| c |\n|---|\n| 3 |\n")
    assert html.count("<table>") == 2
    headline, rest = split_results(html)
    assert headline.endswith("</table></div>") and "<th>a</th>" in headline and "<th>c</th>" in rest


def test_a_run_older_than_its_code_is_flagged(tmp_path) -> None:
    from tools.site.pilots import commits_since

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "T")
    (tmp_path / "study.py").write_text("x = 1\n")
    git("add", "study.py")
    git("commit", "-qm", "study")
    results_commit = git("rev-parse", "HEAD")
    assert commits_since(tmp_path, results_commit, ("study.py",)) == []
    (tmp_path / "other.py").write_text("y = 1\n")
    git("add", "other.py")
    git("commit", "-qm", "unrelated")
    assert commits_since(tmp_path, results_commit, ("study.py",)) == []
    (tmp_path / "study.py").write_text("x = 2\n")
    git("commit", "-qam", "change the study")
    later = commits_since(tmp_path, results_commit, ("study.py",))
    assert len(later) == 1 and later[0].endswith("change the study")
    assert commits_since(tmp_path, "0" * 40, ("study.py",)) is None  # a commit this clone does not have


def test_a_results_page_says_which_verdicts_changed_since_the_previous_run(tmp_path) -> None:
    from tools.site.pilots import conclusion_changes

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    def write(targets: dict) -> dict:
        record = {"metrics": {"targets": targets}}
        path.write_text(json.dumps(record), encoding="utf-8")
        return record

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "T")
    root = tmp_path / "site-data"  # the site's data root need not be the repository's root
    root.mkdir()
    path = root / "cpu-cpu.json"
    first = write({"speed": {"met": True}, "gone": {"verdict": "met"}, "far": {"hier": {"verdict": "missed"}}})
    assert conclusion_changes(root, path, first) is None  # not committed yet: no previous version
    git("add", "site-data/cpu-cpu.json")
    git("commit", "-qm", "first run")
    assert conclusion_changes(root, path, first) is None  # the only committed version is the one on disk
    second = write({"speed": {"verdict": "not resolved"}, "far": {"hier": {"verdict": "missed"}}, "new": {"verdict": "met"}})
    changes = conclusion_changes(root, path, second)  # an uncommitted re-run: compared with HEAD's version
    assert changes.previous == git("rev-parse", "--short", "HEAD")
    assert changes.lines == ["speed: met → not resolved", "new: met (not judged this way before)",
                             "gone: no longer judged (was met)"]
    git("commit", "-qam", "second run")
    assert conclusion_changes(root, path, second).lines == changes.lines  # committed: against the run before
    unchanged = conclusion_changes(root, path, second)
    git("commit", "-q", "--allow-empty", "-m", "unrelated")
    assert conclusion_changes(root, path, second) == unchanged


def result_rows(html: str) -> list[list[str]]:
    """The body rows of the first results table of a page, as the text of each cell."""
    body = html.split('<table class="lvlm-results', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_a_results_page_ranks_one_settings_methods_by_retention_and_links_each_number(site):
    html = site.html("results/llava-1-5-7b-64-visual-tokens/")
    rows = result_rows(html)
    # Columns: method, GQA, MME (score), POPE, retention, prefill, hardware, source. Retention is the mean of
    # value / baseline over the row's own benchmarks: DivPrune (57.6/61.9 + 85.1/85.9) / 2 = 96.1 %.
    assert [row[0] for row in rows] == ["DivPrune", "VisionZip", "SparseVLM", "FastV (reported by DivPrune)"]
    assert rows[0][1:5] == ["57.6", "–", "85.1", "96.1 %"]
    assert rows[1][1:7] == ["55.1", "1690", "–", "89.9 %", "45", "A100"]
    assert rows[3][4] == "74.5 %"
    assert html.count('href="https://example.org/fixture/table-1"') >= 3  # VisionZip's numbers and its source
    assert 'class="lvlm-results lvlm-sortable"' in html
    assert 'data-value="57.6"' in html
    for theme in ("light", "dark"):  # the model's Pareto chart: five budget-only rows at 64 and 192 tokens
        svg = site.site_dir / "assets" / "charts" / f"pareto-llava-1-5-7b-visual-tokens-{theme}.svg"
        assert "<svg" in svg.read_text(encoding="utf-8")
        assert f"pareto-llava-1-5-7b-visual-tokens-{theme}.svg#only-{theme}" in html


def test_the_results_index_lists_every_setting_with_its_best_retention(site):
    text = " ".join(parse(site.html("results/")).text)
    assert "Numbers as reported" in text
    assert "5 methods with 6 result rows (11 numbers) in 3 settings" in " ".join(text.split())
    html = site.html("results/")
    for setting in ("llava-1-5-7b-64-visual-tokens", "llava-1-5-7b-192-visual-tokens",
                    "llava-1-5-7b-gamma-5-t-0"):
        assert f'href="{setting}/"' in html or f'href="./{setting}/"' in html, setting
    speculative = result_rows(site.html("results/llava-1-5-7b-gamma-5-t-0/"))
    assert speculative == [["Spec-LLaVA", "2.5", "3.1", "–", "example.org, Table 4"]]


def test_a_paper_page_shows_its_reported_results(site):
    rows = result_rows(site.html("papers/visionzip-2024/"))
    assert [row[:2] for row in rows] == [["LLaVA-1.5-7B", "64 visual tokens"], ["LLaVA-1.5-7B", "192 visual tokens"]]
    assert rows[0][2] == "GQA 55.1 (61.9); MME (score) 1690 (1862)"
    assert "reported by" in " ".join(" ".join(r) for r in result_rows(site.html("papers/fastv-2024/")))
    assert "lvlm-results" not in site.html("papers/mmmu-2024/")


def test_results_downloads_hold_one_record_per_reported_number(site):
    import csv
    import io

    records = list(csv.DictReader(io.StringIO((site.site_dir / "results.csv").read_text(encoding="utf-8"))))
    assert len(records) == 11
    fastv = next(r for r in records if r["paper"] == "fastv-2024")
    assert (fastv["model"], fastv["visual_tokens"], fastv["benchmark"], fastv["value"], fastv["baseline"],
            fastv["reported_by"]) == ("LLaVA-1.5-7B", "64", "GQA", "46.1", "61.9", "divprune-2025")
    data = json.loads((site.site_dir / "results.json").read_text(encoding="utf-8"))
    assert len(data["results"]) == 11 and "own protocol" in data["note"]
    explore = json.loads((site.site_dir / "assets" / "data" / "explore.json").read_text(encoding="utf-8"))
    column = explore["columns"].index("results")
    flagged = {row[0] for row in explore["rows"] if row[column]}
    assert flagged == {"visionzip-2024", "sparsevlm-2024", "divprune-2025", "fastv-2024", "spec-llava-2025"}
