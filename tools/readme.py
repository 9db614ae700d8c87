"""`readme [--check]`: the paper tables of README.md, generated from the data between two markers."""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from tools.errors import UsageError
from tools.repository import Repository, load_repository
from tools.models import Paper

README = Path("README.md")
START = "<!-- papers:start -->"
END = "<!-- papers:end -->"
GENERATED = "<!-- Generated from papers/*.yaml by `python -m tools readme`; edits here are overwritten. -->"
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def escape(text: str) -> str:
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def links(paper: Paper) -> str:
    found = []
    if paper.arxiv:
        found.append(f"[arXiv](https://arxiv.org/abs/{paper.arxiv})")
    if paper.doi:
        found.append(f"[DOI](https://doi.org/{paper.doi})")
    if paper.url and not (paper.arxiv or paper.doi):
        found.append(f"[paper]({paper.url})")
    if paper.code:
        found.append(f"[code]({paper.code})")
    return " ".join(found)


def paper_row(paper: Paper) -> str:
    if paper.name and paper.title.startswith(paper.name):  # 'FastVLM: Efficient ...' shows its name once
        label = f"**{escape(paper.name)}**{escape(paper.title[len(paper.name):])}"
    elif paper.name:
        label = f"**{escape(paper.name)}**: {escape(paper.title)}"
    else:
        label = escape(paper.title)
    return f"| {label} | {escape(paper.venue)} {paper.year} | {links(paper)} |"


def paper_tables(repository: Repository) -> str:
    """One table per taxonomy node that has papers (every placement counts), in taxonomy order."""
    placed: dict[str, list[Paper]] = defaultdict(list)
    for paper in repository.papers:
        for path in paper.taxonomy:
            placed[path].append(paper)
    lines = [GENERATED, "", f"{len(repository.papers)} papers. Browse them with filters on the website.", ""]
    for path, node in repository.nodes.items():
        papers = sorted(placed.get(path, []), key=lambda p: (-p.year, p.display_name.lower()))
        if not papers:
            continue
        names = [repository.nodes["/".join(path.split("/")[: i + 1])].node.name for i in range(node.depth + 1)]
        lines += [f"### {' › '.join(names)}", "", "| Paper | Venue | Links |", "| --- | --- | --- |"]
        lines += [paper_row(paper) for paper in papers]
        lines.append("")
    return "\n".join(lines)


def render_readme(current: str, repository: Repository) -> str:
    if current.count(START) != 1 or current.count(END) != 1 or current.index(START) > current.index(END):
        raise UsageError(f"README.md needs exactly one '{START}' line followed by one '{END}' line")
    head, rest = current.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{paper_tables(repository)}{END}{tail}"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "readme",
        help="regenerate the paper tables in README.md",
        description=f"Rewrite the part of README.md between '{START}' and '{END}' from papers/*.yaml.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = args.root / README
    current = target.read_text(encoding="utf-8")
    updated = render_readme(current, load_repository(args.root))
    if args.check:
        if updated != current:
            print("README.md is stale; run `python -m tools readme`")
            return 1
        print("README.md is up to date")
        return 0
    if updated != current:
        target.write_text(updated, encoding="utf-8")
    print("README.md paper tables regenerated" if updated != current else "README.md already up to date")
    return 0
