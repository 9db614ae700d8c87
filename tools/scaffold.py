"""Turning what a source knows about a work (arXiv, Crossref, BibTeX) into a new paper file.

A source gives a record: a dict with some of the Paper fields (title, authors, year, venue, ids). `draft_paper`
completes it into a full paper with placeholders (`TODO: ...`) where the source cannot know the value (the
summary; the taxonomy node and kind unless `--node` is given); `validate` then names each placeholder left.
Writing is all or nothing: every draft is checked before the first file is created, and no file is overwritten.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from tools.checks import normalise_title, suggest_node
from tools.errors import Problem, UsageError, display_path
from tools.loading import LoadedFile, LoadedPaper, SafeLoader, load_papers, paper_files, validation_problems
from tools.models import PLACEHOLDER, Paper, PlacedNode

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
TODO_KIND = f"{PLACEHOLDER} set method, benchmark, model, system or survey"
TODO_NODE = f"{PLACEHOLDER} set a node path from taxonomy/taxonomy.yaml, e.g. prefilling/token-compression"
TODO_SUMMARY = f"{PLACEHOLDER} write one sentence in your own words on what the work does and how"
FIELD_ORDER = list(Paper.model_fields)


@dataclass(frozen=True)
class Draft:
    """A paper file about to be written: its id, YAML text and the problems it still has (placeholders)."""

    id: str
    text: str
    todo: list[Problem]


def slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")


def short_name(title: str) -> str | None:
    """'FastV: Plug-and-play ...' -> 'FastV'; None when the title does not start with a short name."""
    head, colon, _ = title.partition(":")
    return head.strip() if colon and 1 <= len(head.split()) <= 3 and len(head) <= 40 else None


def paper_id(record: dict, taken: set[str]) -> str:
    name = short_name(record.get("title", ""))
    base = slug(name) if name else slug(record["authors"][0].split()[-1]) if record.get("authors") else "paper"
    candidate = f"{base or 'paper'}-{record.get('year', 'undated')}"
    number = 2
    unique = candidate
    while unique in taken:
        unique, number = f"{candidate}-{number}", number + 1
    return unique


def existing_papers(root: Path) -> tuple[list[LoadedPaper], set[str]]:
    """The repository's papers that load, and every file stem; broken files elsewhere do not block `new`."""
    files, _ = paper_files(root)
    loaded, _ = load_papers(files, root)
    return loaded, {path.stem for path in files}


def duplicate_of(record: dict, existing: list[LoadedPaper]) -> LoadedPaper | None:
    title = normalise_title(record.get("title", ""))
    for other in existing:
        paper = other.paper
        if record.get("arxiv") and record["arxiv"] == paper.arxiv:
            return other
        if record.get("doi") and paper.doi and record["doi"].lower() == paper.doi.lower():
            return other
        if title and title == normalise_title(paper.title):
            return other
    return None


def check_node(node: str, nodes: dict[str, PlacedNode]) -> PlacedNode:
    if node not in nodes:
        raise UsageError(f"--node '{node}' is not a taxonomy node; {suggest_node(node, nodes)}")
    return nodes[node]


def draft_paper(record: dict, node: PlacedNode | None, paper_id_: str, today: dt.date) -> dict:
    """A full paper dict in field order: the record's values, then defaults and placeholders."""
    values = {key: value for key, value in record.items() if key in Paper.model_fields and value not in (None, "")}
    values["id"] = paper_id_
    name = short_name(values.get("title", ""))
    if name and "name" not in values:
        values["name"] = name
    values.setdefault("kind", node.kind if node else TODO_KIND)
    values.setdefault("taxonomy", [node.path] if node else [TODO_NODE])
    values.setdefault("summary", TODO_SUMMARY)
    values.setdefault("sources", ["community"])
    values.setdefault("added", today)
    return {key: values[key] for key in FIELD_ORDER if key in values}


def render_paper(paper: dict, origin: str) -> str:
    body = yaml.dump(paper, Dumper=SafeDumper, sort_keys=False, allow_unicode=True, width=110,
                     default_flow_style=False)
    return (
        "# yaml-language-server: $schema=../taxonomy/paper.schema.json\n"
        f"# Drafted by `python -m tools new` from {origin}. Replace every 'TODO:' value, check the rest,\n"
        "# then run `python -m tools validate`.\n" + body
    )


def make_draft(record: dict, origin: str, node: PlacedNode | None, taken: set[str], root: Path) -> Draft:
    new_id = paper_id(record, taken)
    text = render_paper(draft_paper(record, node, new_id, dt.date.today()), origin)
    path = root / "papers" / f"{new_id}.yaml"
    loaded = LoadedFile(path, display_path(path, root), text=text)
    try:
        Paper.model_validate(yaml.load(text, Loader=SafeLoader))  # noqa: S506 - the safe C loader
        todo = []
    except ValidationError as exc:
        todo = validation_problems(exc, loaded, Paper)
    return Draft(new_id, text, todo)


def write_drafts(root: Path, drafts: list[Draft]) -> list[Path]:
    """Create every draft's file, refusing (before writing any) if one of them already exists."""
    targets = [root / "papers" / f"{draft.id}.yaml" for draft in drafts]
    clashes = [display_path(target, root) for target in targets if target.exists()]
    if clashes:
        raise UsageError(f"{', '.join(clashes)} already exists; nothing written")
    for draft, target in zip(drafts, targets, strict=True):
        with target.open("x", encoding="utf-8") as handle:
            handle.write(draft.text)
    return targets
