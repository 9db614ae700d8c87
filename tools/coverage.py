"""`coverage FILE... [--json]`: which arXiv ids of another paper list are neither in papers/ nor declined.

A list is a TSV or CSV file (the first cell of each row that is a bare arXiv id) or any text file such as a
Markdown awesome-list (every arxiv.org/abs|pdf|html link and every 'arXiv:ID' mention). Rerun it whenever a peer
list changes: exit 1 while some id is unaccounted for, 0 when every id is a paper or a declined candidate
(those declined only until a public page shows their facts, `recheck: true`, are listed apart).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tools.errors import UsageError
from tools.repository import load_repository

BARE_ID = re.compile(r"^\d{4}\.\d{4,5}$")
ID_IN_TEXT = re.compile(r"(?:arxiv\.org/(?:abs|pdf|html)/|arXiv:\s?)(\d{4}\.\d{4,5})(?:v\d+)?", re.IGNORECASE)
TABLE_SUFFIXES = {".tsv": "\t", ".csv": ","}


@dataclass(frozen=True)
class Coverage:
    """The ids a list gives, split by what the repository holds for each."""

    listed: list[str]
    papers: dict[str, str]  # arXiv id -> paper id
    declined: dict[str, str]  # arXiv id -> reason
    recheck: list[str]  # the declined ids to try again once a public page shows their facts
    missing: list[str]


def ids_in_list(path: Path) -> list[str]:
    """The arXiv ids a list file gives, in order of first appearance."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    separator = TABLE_SUFFIXES.get(path.suffix.lower())
    if separator:
        found = [next((cell.strip() for cell in line.split(separator) if BARE_ID.match(cell.strip())), None)
                 for line in text.splitlines()]
    else:
        found = ID_IN_TEXT.findall(text)
    return list(dict.fromkeys(arxiv for arxiv in found if arxiv))


def coverage(root: Path, files: list[Path]) -> Coverage:
    repository = load_repository(root)
    by_arxiv = {paper.arxiv: paper.id for paper in repository.papers if paper.arxiv}
    reasons = {entry.arxiv: entry.reason for entry in repository.declined.declined}
    recheck = {entry.arxiv for entry in repository.declined.declined if entry.recheck}
    listed = list(dict.fromkeys(arxiv for path in files for arxiv in ids_in_list(path)))
    if not listed:
        raise UsageError(f"no arXiv ids found in {', '.join(map(str, files))}; give a TSV/CSV whose rows hold a "
                         "bare id like 2403.06764, or a Markdown list with arxiv.org links")
    return Coverage(
        listed=listed,
        papers={arxiv: by_arxiv[arxiv] for arxiv in listed if arxiv in by_arxiv},
        declined={arxiv: reasons[arxiv] for arxiv in listed if arxiv in reasons},
        recheck=[arxiv for arxiv in listed if arxiv in recheck],
        missing=[arxiv for arxiv in listed if arxiv not in by_arxiv and arxiv not in reasons],
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "coverage",
        help="report the arXiv ids of a paper list that are neither in papers/ nor declined",
        description="Compare another paper list (TSV/CSV with bare arXiv ids, or Markdown with arxiv.org links) "
                    "with the repository: each id is a paper, a declined candidate (taxonomy/declined.yaml), or "
                    "unaccounted for. Exits 1 while any id is unaccounted for.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="list files to compare")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = coverage(args.root, args.files)
    if args.json:
        print(json.dumps({"listed": len(result.listed), "papers": result.papers, "declined": result.declined,
                          "recheck": result.recheck, "missing": result.missing}, indent=2))
    else:
        recheck = f" ({len(result.recheck)} to recheck: no public page shows their facts yet)" if result.recheck else ""
        print(f"{len(result.listed)} arXiv ids listed: {len(result.papers)} in papers/, "
              f"{len(result.declined)} declined{recheck}, {len(result.missing)} unaccounted for")
        for arxiv in result.recheck:
            print(f"recheck: {arxiv} https://arxiv.org/abs/{arxiv} ({result.declined[arxiv]})")
        for arxiv in result.missing:
            print(f"missing: {arxiv} https://arxiv.org/abs/{arxiv}")
    return 1 if result.missing else 0
