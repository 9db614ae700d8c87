"""`schema`: write the JSON Schema of paper files (generated from `tools.models.Paper`) for editors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tools.models import Paper

SCHEMA_FILE = Path("taxonomy") / "paper.schema.json"


def paper_schema() -> str:
    """The schema as the text committed to taxonomy/paper.schema.json (its first key says it is generated)."""
    schema = Paper.model_json_schema()
    document = {
        "$comment": "Generated from tools/models.py by `python -m tools schema`; do not edit by hand.",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="write taxonomy/paper.schema.json from the Paper model",
        description="Regenerate taxonomy/paper.schema.json from tools/models.py so editors can autocomplete "
                    "and check paper files. With --check, only report whether the committed file is current.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed schema is stale")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = args.root / SCHEMA_FILE
    text = paper_schema()
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{SCHEMA_FILE} is stale; run `python -m tools schema`")
            return 1
        print(f"{SCHEMA_FILE} is up to date")
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
    return 0
