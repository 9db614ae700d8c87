"""The explore page's data file: every paper as a compact row the page filters, sorts and downloads."""

from __future__ import annotations

from typing import Any

from tools import bibtex
from tools.repository import Repository
from tools.site.papers import authors_text, placement_label


def explore_data(repo: Repository) -> dict[str, Any]:
    """The explore page's rows as compact arrays (placements as indexes into `nodes`), without summaries (those load
    only when a reader unfolds one: `explore_summaries`)."""
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
            1 if paper.results else 0,
        ])
    return {
        "columns": ["id", "name", "title", "authors", "year", "venue", "nodes", "facets", "code", "key", "results"],
        "nodes": [[path, placement_label(repo, path)] for path in node_paths],
        "facets": facets,
        "rows": rows,
    }


def explore_summaries(repo: Repository) -> dict[str, str]:
    """Each paper's summary by id: the explore page fetches this file the first time a reader unfolds a summary,
    so that the table itself loads as fast with 2,000 papers as with 500."""
    return {paper.id: paper.summary for paper in repo.papers}
