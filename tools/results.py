"""Reported results as flat records, one per number: the rows behind `export-results` and the site's downloads.

Nothing here computes a new figure: every value is the paper's own, as its `results` entry copied it; the flat
records only repeat the row's model, setting, efficiency figures and source beside each number.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from tools.models import Efficiency, Paper, Setting

SETTING_FIELDS = tuple(Setting.model_fields)
EFFICIENCY_FIELDS = tuple(Efficiency.model_fields)
COLUMNS = ("paper", "method", "model", "setting", *SETTING_FIELDS, "benchmark", "metric", "value", "baseline",
           *EFFICIENCY_FIELDS, "source_url", "source_table", "reported_by", "note")


def records(papers: Iterable[Paper]) -> list[dict[str, Any]]:
    """One record per reported number, in paper-id order, then in the order the file lists them."""
    out = []
    for paper in sorted(papers, key=lambda p: p.id):
        for result in paper.results:
            setting = result.setting.model_dump()
            efficiency = (result.efficiency or Efficiency()).model_dump()
            for score in result.scores:
                out.append({
                    "paper": paper.id,
                    "method": paper.display_name,
                    "model": result.model,
                    "setting": result.setting.label,
                    **setting,
                    "benchmark": score.benchmark,
                    "metric": score.metric,
                    "value": score.value,
                    "baseline": score.baseline,
                    **efficiency,
                    "source_url": str(result.source.url),
                    "source_table": result.source.table,
                    "reported_by": result.reported_by,
                    "note": result.note,
                })
    return out


def number_text(value: float) -> str:
    """A reported number as text: whole numbers without '.0' (MME's 1721), others as Python prints them."""
    return str(int(value)) if value.is_integer() else repr(value)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else number_text(value) if isinstance(value, float) else value
                         for key, value in row.items()})
    return buffer.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"note": NOTE, "columns": list(COLUMNS), "results": rows}, ensure_ascii=False, indent=1) + "\n"


NOTE = ("Numbers as each paper reports them, under its own protocol (prompting, evaluation code, hardware); "
        "rows from different papers are comparable only as far as those protocols agree. 'baseline' is the "
        "uncompressed model's number in the same table; 'reported_by' names the paper whose table printed a row "
        "that is not the method's own.")
