"""`stats [--json]`: counts of papers by stage, node, facet value, year, venue and code availability."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from tools.repository import Repository, load_repository


def compute_stats(repository: Repository) -> dict[str, dict[str, int]]:
    """Each section maps a value to its number of papers; nodes count every placement, the rest one per paper."""
    papers = repository.papers
    facets: Counter[str] = Counter(f"{facet}={value}" for p in papers for facet, value in p.attributes.items())
    return {
        "total": {"papers": len(papers)},
        "stage": dict(Counter(p.stage for p in papers).most_common()),
        "kind": dict(Counter(p.kind for p in papers).most_common()),
        "node": {path: n for path in repository.nodes
                 if (n := sum(path in p.taxonomy for p in papers))},
        "facet": dict(sorted(facets.items())),
        "year": dict(sorted(Counter(p.year for p in papers).items(), reverse=True)),
        "venue": dict(Counter(p.venue for p in papers).most_common()),
        "venue_type": dict(Counter(p.venue_type for p in papers).most_common()),
        "code": {"available": sum(p.code is not None for p in papers),
                 "not listed": sum(p.code is None for p in papers)},
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="count papers by stage, node, facet, year, venue and code availability",
        description="Count the papers by stage, kind, taxonomy node, facet value, year, venue, venue type and "
                    "whether code is available.",
    )
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stats = compute_stats(load_repository(args.root))
    if args.json:
        print(json.dumps({section: {str(k): v for k, v in counts.items()} for section, counts in stats.items()},
                         indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for section, counts in stats.items():
        table = Table(title=section, title_justify="left", show_header=False)
        table.add_column(section)
        table.add_column("papers", justify="right")
        for value, count in counts.items():
            table.add_row(str(value), str(count))
        console.print(table)
    return 0
