"""`validate [--changed REF]`: every check of the data; exit 1 on any error, else `N papers valid`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tools.errors import DataError, UsageError, display_path
from tools.loading import PAPERS_DIR
from tools.repository import load_repository


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check every paper file and the taxonomy",
        description="Check every paper file and the taxonomy: schema, taxonomy placement, facets, duplicates, "
                    "URLs. Prints each problem as FILE:LINE: FIELD: MESSAGE and exits 1 if there is any.",
    )
    parser.add_argument("--changed", metavar="REF",
                        help="report only problems in paper files changed since git REF (e.g. origin/main); "
                             "the whole repository is still loaded so cross-file rules apply")
    parser.set_defaults(run=run)


def changed_files(root: Path, ref: str) -> set[str]:
    """Paper files (display paths) that differ from `ref`, committed or not, plus untracked ones."""
    commands = [
        ["git", "diff", "--name-only", "--relative", ref, "--", PAPERS_DIR],
        ["git", "ls-files", "--others", "--exclude-standard", "--", PAPERS_DIR],
    ]
    names: set[str] = set()
    for command in commands:
        try:
            result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True, timeout=60)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            raise UsageError(f"cannot list the files changed since '{ref}': {detail.strip()}") from None
        names.update(display_path(root / name, root) for name in result.stdout.splitlines())
    return names


def run(args: argparse.Namespace) -> int:
    root = args.root
    try:
        repository = load_repository(root)
    except DataError as exc:
        if not args.changed:
            raise
        changed = changed_files(root, args.changed)
        relevant = [p for p in exc.problems if p.path in changed or not p.path.startswith(PAPERS_DIR + "/")]
        if relevant:
            raise DataError(relevant) from None
        print(f"{len(changed)} changed paper files valid ({len(exc.problems)} problems in unchanged files)")
        return 0
    for warning in repository.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{len(repository.papers)} papers valid")
    return 0
