"""The whole validated data set: taxonomy, vocabulary and papers, loaded and checked together.

`tools.loading` reads and validates single files; `tools.checks` applies the rules that span files; this module
joins the two, so neither needs the other's caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tools.checks import check_declined, check_papers
from tools.errors import DataError, Problem
from tools.loading import load_declined, load_off_scope, load_papers, load_taxonomy, load_vocabulary, paper_files
from tools.models import DeclinedList, OffScopeList, Paper, PlacedNode, Taxonomy, Vocabulary


@dataclass(frozen=True)
class Repository:
    """The validated data: taxonomy, its nodes by path, the vocabulary, the declined and off-scope
    arXiv entries, the papers sorted by id and their files."""

    root: Path
    taxonomy: Taxonomy
    nodes: dict[str, PlacedNode]
    vocabulary: Vocabulary
    declined: DeclinedList
    off_scope: OffScopeList
    papers: list[Paper]
    paths: dict[str, Path]
    warnings: list[Problem] = field(default_factory=list)


def load_repository(root: Path = Path(".")) -> Repository:
    """Load and check everything; raises `DataError` listing every problem of every file."""
    root = Path(root)
    taxonomy = load_taxonomy(root)
    vocabulary = load_vocabulary(root)
    declined = load_declined(root)
    off_scope = load_off_scope(root)
    nodes = taxonomy.flatten()
    files, problems = paper_files(root)
    loaded, file_problems = load_papers(files, root)
    errors, warnings = check_papers(loaded, nodes, vocabulary)
    problems += file_problems + errors + check_declined(loaded, declined)
    if problems:
        raise DataError(problems)
    loaded.sort(key=lambda record: record.paper.id)
    return Repository(
        root=root,
        taxonomy=taxonomy,
        nodes=nodes,
        vocabulary=vocabulary,
        declined=declined,
        off_scope=off_scope,
        papers=[record.paper for record in loaded],
        paths={record.paper.id: record.path for record in loaded},
        warnings=warnings,
    )
