"""MkDocs hook: the thin adapter between MkDocs and the site generator in `tools/site/`.

The generator decides every page and asset from `papers/`, `taxonomy/` and the pilot results; this module only
hands them to MkDocs. Every generated page is a virtual markdown file holding only front matter (title, citation
tags); its body is rendered from a jinja2 template in `site_src/templates/` with autoescaping on, so no text from
a paper file is ever parsed as markdown or HTML. Nothing generated is written into the repository.

Events, in build order:
- `on_config` runs the generator (data from `extra.data_root`, env `LVLM_DATA_ROOT`) and expands the
  `@taxonomy:<stage>` and `@pilots` placeholders of the navigation;
- `on_files` adds the generated pages, the downloads (`papers.bib`, `papers.csl.json`, `papers.ris`,
  `papers.json`, `feed.xml`), the explore page's data file and the charts;
- `on_page_markdown` points each generated page's "edit" button at the file it comes from;
- `on_page_content` replaces the (empty) body of a generated page by its rendered template;
- `on_serve` also watches the pilot results, so `mkdocs serve` picks up new runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.utils import get_relative_url

from tools import loading
from tools.errors import SiteError
from tools.site import pages
from tools.site.navigation import expand_nav
from tools.site.pilots import RESULTS_DIR

log = logging.getLogger("mkdocs.hooks.site")

DATA_ROOT_ENV = "LVLM_DATA_ROOT"

_site: pages.Site | None = None


def data_root_of(config: Any) -> Path:
    """The folder holding papers/ and taxonomy/: env `LVLM_DATA_ROOT`, else `extra.data_root`, else the folder of
    mkdocs.yml."""
    config_dir = Path(config.config_file_path).resolve().parent
    configured = os.environ.get(DATA_ROOT_ENV) or config.extra.get("data_root") or "."
    return (config_dir / configured).resolve()


def on_config(config: Any) -> Any:
    global _site
    data_root = data_root_of(config)
    config_dir = Path(config.config_file_path).resolve().parent
    try:
        site = pages.generate(data_root, config_dir,
                              pages.SiteConfig(config.site_name, config.site_url, config.repo_url))
        used: set[str] = set()
        config.nav = expand_nav(config.nav or [], site.repo, site.studies, used)
    except SiteError as exc:
        raise PluginError(str(exc)) from None
    missing = [stage.id for stage in site.repo.taxonomy.stages if stage.id not in used]
    if missing:
        log.warning("mkdocs.yml's nav has no '@taxonomy:%s' entry; add one so the stage gets a tab",
                    "', '@taxonomy:".join(missing))
    _site = site
    log.info("site: %d papers, %d taxonomy nodes from %s", len(site.repo.papers), len(site.repo.nodes), data_root)
    return config


def on_files(files: Files, config: Any) -> Files:
    site = current_site()
    for page in site.pages.values():
        if files.get_file_from_path(page.src_uri) is not None:
            raise PluginError(f"site_src/docs/{page.src_uri} clashes with a generated page; rename or delete it")
        inclusion = InclusionLevel.INCLUDED if page.in_nav else InclusionLevel.NOT_IN_NAV
        files.append(File.generated(config, page.src_uri, content=pages.front_matter(page), inclusion=inclusion))
    for src_uri, content in site.assets.items():
        files.append(File.generated(config, src_uri, content=content))
    for src_uri, path in site.asset_files.items():
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown_text: str, page: Any, config: Any, files: Files) -> str:
    generated = current_site().pages.get(page.file.src_uri)
    if generated is not None and config.repo_url:
        page.edit_url = f"{config.repo_url.rstrip('/')}/edit/main/{generated.edit_path}"
        if generated.edit_path.endswith("/") or "." not in generated.edit_path.rsplit("/", 1)[-1]:
            page.edit_url = f"{config.repo_url.rstrip('/')}/tree/main/{generated.edit_path}"
    return markdown_text


def on_page_content(content: str, page: Any, config: Any, files: Files) -> str:
    site = current_site()
    generated = site.pages.get(page.file.src_uri)
    if generated is None:
        return content
    here = page.url

    def link(target: str) -> str:
        """`target` (a site path like 'papers/fastv-2024/') relative to the page being rendered."""
        return get_relative_url(target or "./", here)

    try:
        return pages.render(site, generated, link)
    except SiteError as exc:
        raise PluginError(str(exc)) from None


def on_serve(server: Any, config: Any, builder: Callable[..., Any]) -> Any:
    """Watch the data actually built from (it may live outside the config's folder) and the pilot results."""
    root = data_root_of(config)
    for folder in (root / loading.PAPERS_DIR, root / "taxonomy", root / RESULTS_DIR):
        if folder.is_dir():
            server.watch(str(folder))
    return server


def current_site() -> pages.Site:
    if _site is None:
        raise PluginError("the site hook ran out of order: on_config did not load the repository")
    return _site
