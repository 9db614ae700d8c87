"""The built site in a real browser: Debian's headless Chromium driven by Playwright, over loopback HTTP.

The fixture site is built once per session (tests/fixtures/site/sitebuild.py) and served by a standard-library
HTTP server on 127.0.0.1. Chromium is the system package (`apt-get install chromium`); no browser is ever
downloaded. Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

import re

import json

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from fixtures.site.sitebuild import HOSTILE_TITLE, ROOT, BuiltSite, build_fixture_site
from tools import bibtex

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "test-output" / "screenshots"


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit and Path(explicit).is_file():
        return explicit
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="session")
def site() -> BuiltSite:
    return build_fixture_site()


@pytest.fixture(scope="session")
def base_url(site: BuiltSite) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site.site_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Chromium for this module only: Playwright's sync API holds an event loop while it runs, which must not
    outlive the browser tests (later tests may call asyncio.run)."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the tests never download one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright starts Chromium on a fresh temporary profile (--user-data-dir) and removes it afterwards.
        instance = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def context(browser):
    """A fresh browser context per test: no storage (theme choice, caches) carries over between tests."""
    fresh = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    fresh.grant_permissions(["clipboard-read", "clipboard-write"])
    yield fresh
    fresh.close()


class Watched:
    """A browser tab that records console errors, uncaught exceptions, dialogs and failed requests."""

    def __init__(self, context, base_url: str):
        self.base_url = base_url
        self.page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))
        self.page.on("requestfailed", self._on_request_failed)

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)

    def _on_request_failed(self, request) -> None:
        if request.failure != "net::ERR_ABORTED":  # aborted by leaving the page, not a failure of the site
            self.errors.append(f"request failed: {request.url} ({request.failure})")

    def open(self, path: str, settle: bool = False) -> None:
        """Load a page; with `settle`, also wait until the network is idle (late requests and their errors)."""
        self.page.goto(self.base_url + path)
        if settle:
            self.page.wait_for_load_state("networkidle")

    def explore_ready(self) -> None:
        self.page.wait_for_selector("#lvlm-explore[data-ready=done]")


@pytest.fixture
def tab(context, base_url) -> Iterator[Watched]:
    watched = Watched(context, base_url)
    yield watched
    try:
        assert watched.errors == [], "the browser reported errors"
        assert watched.dialogs == [], "a page opened a dialog"
    finally:
        watched.page.close()


def expected_count(site: BuiltSite, stage: str, year: int) -> int:
    return sum(1 for p in site.repo.papers if p.stage == stage and p.year == year)


def test_explore_count_follows_stage_and_year_and_survives_reload(site, tab):
    tab.open("explore/")
    tab.explore_ready()
    assert tab.page.text_content("#lvlm-count") == str(len(site.repo.papers))
    tab.page.select_option("select[name=stage]", "prefilling")
    tab.page.fill("input[name=from]", "2024")
    tab.page.fill("input[name=to]", "2024")
    expected = expected_count(site, "prefilling", 2024)
    assert 1 < expected < len(site.repo.papers)
    assert tab.page.text_content("#lvlm-count") == str(expected)
    assert tab.page.locator("#lvlm-rows tr").count() == expected
    query = parse_qs(urlparse(tab.page.url).query)
    assert query == {"stage": ["prefilling"], "from": ["2024"], "to": ["2024"]}

    tab.page.reload()
    tab.explore_ready()
    assert tab.page.text_content("#lvlm-count") == str(expected)
    assert tab.page.input_value("select[name=stage]") == "prefilling"
    assert tab.page.input_value("input[name=from]") == "2024"


@pytest.mark.parametrize("format_", ["bibtex", "csl", "ris"])
def test_explore_downloads_exactly_the_filtered_rows_in_each_format(site, tab, tmp_path, format_):
    tab.open("explore/?stage=decoding")
    tab.explore_ready()
    expected = sorted(bibtex.citation_key(p) for p in site.repo.papers  # any placement under the stage counts
                      if any(path.split("/", 1)[0] == "decoding" for path in p.taxonomy))
    assert len(expected) > sum(p.stage == "decoding" for p in site.repo.papers), "the fixture has a secondary one"
    assert tab.page.text_content("#lvlm-count") == str(len(expected))
    tab.page.select_option("#lvlm-download-format", format_)
    with tab.page.expect_download() as download_info:
        tab.page.click("#lvlm-download")
    target = tmp_path / "filtered"
    download_info.value.save_as(target)
    text = target.read_text(encoding="utf-8")
    if format_ == "bibtex":
        import bibtexparser

        keys = [entry.key for entry in bibtexparser.parse_string(text).entries]
    elif format_ == "csl":
        keys = [item["id"] for item in json.loads(text)]
    else:
        keys = re.findall(r"^ID  - (\S+)$", text, flags=re.MULTILINE)
        assert text.count("TY  - ") == text.count("ER  -") == len(keys)
    assert sorted(keys) == expected


def test_explore_text_filter_and_sorting(site, tab):
    tab.open("explore/")
    tab.explore_ready()
    tab.page.fill("input[name=text]", "alert(1)")
    assert tab.page.text_content("#lvlm-count") == "1"
    assert HOSTILE_TITLE in tab.page.text_content("#lvlm-rows")
    tab.page.click("#lvlm-reset")
    tab.page.click("button[data-sort=year]")  # year descending -> ascending
    years = [int(cell) for cell in tab.page.locator("#lvlm-rows tr td:nth-child(2)").all_text_contents()]
    assert years == sorted(years) and years[0] == min(p.year for p in site.repo.papers)
    assert "order=asc" in tab.page.url


def test_a_results_table_sorts_by_the_clicked_column_both_ways(tab):
    tab.open("results/llava-1-5-7b-64-visual-tokens/")
    tab.page.wait_for_selector("table.lvlm-sortable th button.lvlm-sort")

    def methods() -> list[str]:
        return [name.split(" (")[0] for name in
                tab.page.locator("table.lvlm-results tbody tr td:first-child").all_text_contents()]

    assert methods() == ["DivPrune", "VisionZip", "SparseVLM", "FastV"]  # by retention, as generated
    gqa = tab.page.locator("table.lvlm-results th", has_text="GQA")
    gqa.locator("button").click()  # a number column: highest first
    assert methods() == ["DivPrune", "VisionZip", "SparseVLM", "FastV"]
    assert gqa.get_attribute("aria-sort") == "descending"
    gqa.locator("button").click()
    assert methods() == ["FastV", "SparseVLM", "VisionZip", "DivPrune"]
    mme = tab.page.locator("table.lvlm-results th", has_text="MME")
    mme.locator("button").click()  # rows without an MME number stay last, in their previous order
    assert methods() == ["VisionZip", "SparseVLM", "FastV", "DivPrune"]
    tab.page.locator("table.lvlm-results th", has_text="Method").locator("button").click()
    assert methods() == ["DivPrune", "FastV", "SparseVLM", "VisionZip"]


def test_explore_filters_the_papers_with_reported_results(site, tab):
    tab.open("explore/?results=1")
    tab.explore_ready()
    with_results = sorted(p.id for p in site.repo.papers if p.results)
    assert tab.page.is_checked("input[name=results]")
    assert tab.page.text_content("#lvlm-count") == str(len(with_results))
    links = tab.page.locator("#lvlm-rows tr td:first-child a").evaluate_all("els => els.map(a => a.href)")
    assert sorted(link.rstrip("/").rsplit("/", 1)[1] for link in links) == with_results


def test_a_shared_explore_link_keeps_its_filter_and_opens_no_search_overlay(site, tab):
    tab.open("explore/?text=kv+cache&stage=decoding")
    tab.explore_ready()
    assert tab.page.input_value("input[name=text]") == "kv cache"
    assert not tab.page.is_checked("#__search"), "Material's search overlay opened over the table"
    expected = [p for p in site.repo.papers if any(path.startswith("decoding") for path in p.taxonomy)
                and all(word in f"{p.name} {p.title} {' '.join(p.authors)}".lower() for word in ("kv", "cache"))]
    assert expected and tab.page.text_content("#lvlm-count") == str(len(expected))
    tab.page.keyboard.press("Escape")
    assert tab.page.input_value("input[name=text]") == "kv cache"


def test_search_finds_a_paper_by_its_arxiv_id(tab):
    tab.open("")
    tab.page.focus(".md-search__input")
    tab.page.keyboard.type("2403.06764", delay=30)
    result = tab.page.locator(".md-search-result__item a[href*='papers/fastv-2024/']").first
    result.wait_for(timeout=15000)


def test_search_ranks_the_paper_named_fastv_first(tab):
    tab.open("")
    tab.page.focus(".md-search__input")
    tab.page.keyboard.type("FastV", delay=30)  # the theme's search listens to key events
    tab.page.locator(".md-search-result__item > a[href*='h=fastv']").first.wait_for(timeout=15000)  # whole query
    first = tab.page.locator(".md-search-result__item > a").first
    assert "papers/fastv-2024/" in first.get_attribute("href"), "FastViT or FastVID ranked above FastV"
    first.click()
    tab.page.wait_for_url("**/papers/fastv-2024/**")
    assert "An Image Is Worth 1/2 Tokens" in tab.page.text_content("h1")


def test_paper_page_copy_button_puts_the_bibtex_on_the_clipboard(site, tab):
    tab.open("papers/fastv-2024/")
    block = tab.page.locator(".lvlm-bibtex")
    expected = bibtex.paper_bibtex(site.paper("fastv-2024")).strip()
    assert block.locator("code").text_content().strip() == expected
    block.hover()
    block.locator("button[data-md-type=copy]").click()
    copied = tab.page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == expected


def test_script_title_renders_as_text_with_no_dialog(site, tab):
    for path in ["papers/script-title-2024/", "", "recent/",
                 "taxonomy/prefilling/token-compression/attention-guided/", "explore/?text=alert"]:
        tab.open(path)
        if path.startswith("explore/"):
            tab.explore_ready()
        assert HOSTILE_TITLE in tab.page.text_content("main"), path
        injected = """Array.from(document.scripts).filter(s => s.textContent.includes('alert(')).length
                      + document.querySelectorAll('img[src=x], [onerror], [onmouseover]').length"""
        assert tab.page.evaluate(injected) == 0, path
    tab.open("papers/script-title-2024/")
    assert tab.page.text_content("h1") == HOSTILE_TITLE
    assert tab.dialogs == []


def test_explore_on_a_phone_folds_the_filters_and_shows_rows_as_cards(site, tab):
    tab.page.set_viewport_size({"width": 390, "height": 844})
    tab.open("explore/?stage=prefilling")
    tab.explore_ready()
    assert tab.page.evaluate("document.querySelector('.lvlm-filters-box').open") is False
    assert tab.page.text_content("#lvlm-filter-count") == " (1 set)"
    assert not tab.page.is_visible("select[name=stage]")
    first_row = tab.page.locator("#lvlm-rows tr").first
    assert first_row.evaluate("row => getComputedStyle(row).display") == "block"
    assert tab.page.locator(".lvlm-explore__table thead").is_hidden()
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing sticks out sideways"
    tab.page.click(".lvlm-filters-box > summary")
    assert tab.page.input_value("select[name=stage]") == "prefilling"
    assert tab.page.locator("#lvlm-more").is_hidden()  # the fixture's rows fit in one page


def test_explore_shows_each_placement_with_its_parent(site, tab):
    tab.open("explore/?node=prefilling/token-compression")
    tab.explore_ready()
    cells = tab.page.locator("#lvlm-rows tr td:nth-child(4)").all_text_contents()
    assert cells and all(cell.startswith("Prefilling-side token compression › ") for cell in cells)


def test_explore_rows_unfold_their_summary(site, tab):
    tab.open("explore/?text=An+Image+Is+Worth+1%2F2+Tokens")
    tab.explore_ready()
    summary = tab.page.locator("#lvlm-rows .lvlm-explore__summary").first
    assert not summary.evaluate("node => node.open")
    summary.locator("summary").click()  # the first unfold fetches assets/data/summaries.json
    summary.locator("xpath=self::*[@data-filled]").wait_for(timeout=10000)
    assert site.paper("fastv-2024").summary in summary.text_content()


def test_instant_navigation_to_explore_fills_the_table(site, tab):
    tab.open("")
    tab.page.click(".md-tabs__link:text('Explore')")
    tab.page.wait_for_url("**/explore/")
    tab.explore_ready()
    assert tab.page.text_content("#lvlm-count") == str(len(site.repo.papers))


PAGES = ["", "taxonomy/", "taxonomy/decoding/kv-cache-compression/", "papers/fastv-2024/", "explore/",
         "statistics/", "recent/", "benchmarks/", "pilots/", "pilots/serving/", "pilots/hybrid-kv/", "roofline/",
         "contributing/", "cite/", "downloads/", "results/", "results/llava-1-5-7b-64-visual-tokens/"]


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_without_console_errors(tab, path):
    tab.open(path, settle=True)
    assert tab.page.locator("h1").count() >= 1


def test_unknown_address_shows_the_404_page(base_url, context):
    page = context.new_page()
    try:
        response = page.goto(base_url + "no/such/page/")
        assert response.status == 404
    finally:
        page.close()
    # The loopback server answers 404 without the page; the site's own 404.html is what a host serves.
    page = context.new_page()
    try:
        page.goto(base_url + "404.html")
        assert "Page not found" in page.text_content("h1")
    finally:
        page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_of_home_explore_and_a_paper(tab, scheme):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.page.emulate_media(color_scheme=scheme)
    for name, path in [("home", ""), ("explore", "explore/?stage=prefilling"), ("paper", "papers/fastv-2024/")]:
        tab.open(path)
        if name == "explore":
            tab.explore_ready()
        colour = tab.page.evaluate("document.body.getAttribute('data-md-color-scheme')")
        assert colour == ("slate" if scheme == "dark" else "default")
        target = SCREENSHOTS / f"{name}-{scheme}.png"
        tab.page.screenshot(path=str(target))
        assert target.stat().st_size > 10_000
