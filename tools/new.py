"""`new --arxiv ID | --doi DOI | --bibtex FILE [--node NODE]`: scaffold one paper file from a source."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.errors import UsageError, display_path
from tools.loading import load_taxonomy
from tools.scaffold import check_node, duplicate_of, existing_papers, make_draft, write_drafts


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "new",
        help="create papers/<id>.yaml from an arXiv id, a DOI or a BibTeX entry",
        description="Create a paper file from what arXiv, Crossref or a BibTeX entry knows. Values the source "
                    "cannot give are left as 'TODO:' placeholders that `validate` points out. Refuses to "
                    "create a paper that is already in the repository. Exit 2 when the source cannot be reached.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arxiv", metavar="ID", help="arXiv id, e.g. 2403.06764 (also arXiv:... or an abs URL)")
    source.add_argument("--doi", metavar="DOI", help="DOI, looked up on Crossref, e.g. 10.1007/978-3-031-73004-7_2")
    source.add_argument("--bibtex", metavar="FILE", type=Path, help="a .bib file holding exactly one entry")
    parser.add_argument("--node", metavar="NODE",
                        help="taxonomy node to place the paper under, e.g. prefilling/token-compression")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tools.sources import fetch_arxiv, fetch_crossref, read_bibtex  # network clients: only when used

    root = args.root
    nodes = load_taxonomy(root).flatten()
    node = check_node(args.node, nodes) if args.node else None
    if args.arxiv:
        record, origin = fetch_arxiv(args.arxiv), f"arXiv {args.arxiv}"
    elif args.doi:
        record, origin = fetch_crossref(args.doi), f"Crossref (DOI {args.doi})"
    else:
        records = read_bibtex(args.bibtex)
        if len(records) != 1:
            raise UsageError(f"{args.bibtex} holds {len(records)} entries; `new` takes one "
                             "(use `python -m tools import-bibtex` for several)")
        record, origin = records[0], f"BibTeX file {args.bibtex.name}"
    existing, taken = existing_papers(root)
    twin = duplicate_of(record, existing)
    if twin:
        raise UsageError(f"already in the repository as {twin.shown} ('{twin.paper.title}'); nothing written")
    draft = make_draft(record, origin, node, taken, root)
    (path,) = write_drafts(root, [draft])
    print(f"wrote {display_path(path, root)}")
    for problem in draft.todo:
        print(f"  to do: {problem}")
    return 0
