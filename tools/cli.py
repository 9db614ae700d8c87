"""`python -m tools <verb>`: one argparse entry point; each verb lives in its own module with `register()`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from tools.errors import DataError, ToolError

# Modules that each add one or more verbs through `register(subparsers)`.
VERB_MODULES = [
    "tools.validate",
    "tools.schema",
    "tools.new",
    "tools.bibtex_cli",
    "tools.results_cli",
    "tools.readme",
    "tools.stats",
    "tools.bench",
    "tools.links",
    "tools.issue_form",
    "tools.coverage",
    "tools.discover",
    "tools.refresh",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools",
        description="Toolchain of the Efficient-LVLM-Inference literature repository.",
    )
    parser.add_argument("-C", "--root", type=Path, default=Path("."),
                        help="repository root holding papers/ and taxonomy/ (default: current directory)")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except DataError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return exc.exit_code
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `python -m tools stats | head`: the reader left, nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
