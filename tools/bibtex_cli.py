"""`export-bibtex [-o FILE] [--node NODE]` and `import-bibtex FILE [--node NODE]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.errors import display_path
from tools.files import emit
from tools.loading import load_taxonomy
from tools.repository import load_repository
from tools.scaffold import check_node, duplicate_of, existing_papers, make_draft, write_drafts


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export-bibtex",
        help="write every paper (or one subtree) as BibTeX",
        description="Write the papers as one .bib file with stable citation keys (e.g. chen2024fastv): "
                    "@inproceedings, @article, or @misc with eprint/archivePrefix for arXiv preprints.",
    )
    export.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of standard output")
    export.add_argument("--node", metavar="NODE", help="only papers placed at or under this taxonomy node")
    export.set_defaults(run=run_export)

    imported = subparsers.add_parser(
        "import-bibtex",
        help="create paper files from the entries of a .bib file",
        description="Create one papers/<id>.yaml per BibTeX entry, with 'TODO:' placeholders for what BibTeX "
                    "cannot say. Entries already in the repository (same arXiv id, DOI or title) are skipped. "
                    "Nothing is written if the file cannot be read.",
    )
    imported.add_argument("file", type=Path, metavar="FILE", help="the .bib file")
    imported.add_argument("--node", metavar="NODE", help="taxonomy node to place every imported paper under")
    imported.set_defaults(run=run_import)


def run_export(args: argparse.Namespace) -> int:
    from tools.bibtex import export_bibtex  # bibtexparser and pylatexenc load only for the BibTeX verbs

    repository = load_repository(args.root)
    papers = repository.papers
    if args.node:
        node = check_node(args.node, repository.nodes).path
        papers = [p for p in papers if any(t == node or t.startswith(node + "/") for t in p.taxonomy)]
    emit(export_bibtex(papers), args.output, f"{len(papers)} entries")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from tools.sources import read_bibtex

    root = args.root
    nodes = load_taxonomy(root).flatten()
    node = check_node(args.node, nodes) if args.node else None
    records = read_bibtex(args.file)
    existing, taken = existing_papers(root)
    drafts = []
    for record in records:
        twin = duplicate_of(record, existing)
        if twin:
            print(f"skipped {record['citation_key']}: already in the repository as {twin.shown}")
            continue
        draft = make_draft(record, f"BibTeX entry {record['citation_key']}", node, taken, root)
        taken.add(draft.id)
        drafts.append(draft)
    for path in write_drafts(root, drafts):
        print(f"wrote {display_path(path, root)}")
    if drafts:
        print(f"{len(drafts)} papers drafted; `python -m tools validate` lists the TODO values left to fill in")
    return 0
