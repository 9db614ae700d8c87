"""The whole-collection downloads besides the citation formats of `tools.citations`: papers.json, and the .bib
split by key for the paper pages."""

from __future__ import annotations

import json
import re

from tools.repository import Repository

BIB_ENTRY_START = re.compile(r"\n(?=@)")
BIB_KEY = re.compile(r"@\w+\s*\{\s*([^,\s]+)\s*,")


def entries_by_key(library: str) -> dict[str, str]:
    """Split an exported .bib into its entries by citation key (LaTeX-encoding once for both uses is faster)."""
    entries = {}
    for chunk in BIB_ENTRY_START.split(library):
        match = BIB_KEY.match(chunk.strip())
        if match:
            entries[match.group(1)] = chunk.strip() + "\n"
    return entries


def papers_json(repo: Repository) -> str:
    payload = {
        "generated": "by tools/site from papers/*.yaml; edit those files, not this one",
        "count": len(repo.papers),
        "papers": [paper.model_dump(mode="json", exclude_defaults=True) for paper in repo.papers],
    }
    return json.dumps(payload, ensure_ascii=False, indent=1) + "\n"
