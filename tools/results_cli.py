"""`export-results [--format csv|json] [-o FILE]`: every reported number, one record each."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.files import emit
from tools.repository import load_repository
from tools.results import records, to_csv, to_json

FORMATS = {"csv": to_csv, "json": to_json}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-results",
        help="write the reported results as CSV or JSON",
        description="Write every number of the papers' reported results as one record: paper, model, setting, "
                    "benchmark, metric, value, the uncompressed baseline of the same table, efficiency figures and "
                    "the source page and table. Numbers are the papers' own, under their own protocols.",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), default="csv", help="output format (default: csv)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of standard output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repository = load_repository(args.root)
    rows = records(repository.papers)
    emit(FORMATS[args.format](rows), args.output, f"{len(rows)} reported numbers")
    return 0
