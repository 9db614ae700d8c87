"""The site's navigation: mkdocs.yml's `@taxonomy:<stage>` and `@pilots` entries expanded from the data."""

from __future__ import annotations

import html
from typing import Any

from tools.errors import SiteError
from tools.repository import Repository
from tools.site.pilots import study_title


def stage_nav(repo: Repository, stage: str) -> list[Any]:
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


def expand_nav(items: list[Any], repo: Repository, studies: list[str], used: set[str]) -> list[Any]:
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


def expand_value(value: Any, repo: Repository, studies: list[str], used: set[str]) -> Any:
    if isinstance(value, str) and value.startswith("@taxonomy:"):
        stage = value.removeprefix("@taxonomy:")
        used.add(stage)
        return stage_nav(repo, stage)
    if isinstance(value, list):
        return expand_nav(value, repo, studies, used)
    return value
