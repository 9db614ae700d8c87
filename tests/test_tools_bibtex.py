"""BibTeX export/import: entry types, keys, LaTeX escaping, and round trips through bibtexparser."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import bibtexparser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.bibtex import citation_key, export_bibtex, import_bibtex, paper_bibtex
from tools.cli import main
from tools.repository import load_repository
from tools.models import Paper

EXPORTED_FIELDS = ("title", "authors", "year", "venue", "venue_type", "arxiv", "doi", "url")


def make_paper(**changes: object) -> Paper:
    fields = {
        "id": "example-2024",
        "title": "Example Title",
        "authors": ["Ada Lovelace"],
        "year": 2024,
        "venue": "CVPR",
        "venue_type": "conference",
        "kind": "method",
        "taxonomy": ["prefilling/token-compression"],
        "summary": "A paper made up for a test of the BibTeX export.",
        "sources": ["community"],
        "added": dt.date(2026, 11, 21),
    }
    return Paper.model_validate(fields | changes)


def exported_view(paper: Paper) -> dict:
    """The fields export writes, as import gives them back (authors_truncated only when true)."""
    view = {key: getattr(paper, key) for key in EXPORTED_FIELDS if getattr(paper, key) is not None}
    view["url"] = str(paper.url) if paper.url else None
    if paper.authors_truncated:
        view["authors_truncated"] = True
    return {k: v for k, v in view.items() if v is not None}


def imported_view(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "citation_key"}


def test_snapshot_round_trips_through_bibtexparser(repo_root: Path) -> None:
    papers = load_repository(repo_root).papers
    text = export_bibtex(papers)
    library = bibtexparser.parse_string(text)
    assert not library.failed_blocks
    assert len(library.entries) == len(papers)
    assert len({entry.key for entry in library.entries}) == len(papers)
    records = {record["citation_key"]: record for record in import_bibtex(text)}
    for paper in papers:
        assert imported_view(records[citation_key(paper)]) == exported_view(paper), paper.id


def test_entry_types_follow_the_venue_type() -> None:
    article = import_bibtex(paper_bibtex(make_paper(venue="TPAMI", venue_type="journal")))
    preprint_text = paper_bibtex(make_paper(venue="arXiv", venue_type="preprint", arxiv="2403.06764"))
    assert paper_bibtex(make_paper()).startswith("@inproceedings{lovelace2024example,")
    assert "journal = {TPAMI}" in paper_bibtex(make_paper(venue="TPAMI", venue_type="journal"))
    assert preprint_text.startswith("@misc{")
    assert "eprint = {2403.06764}" in preprint_text and "archiveprefix = {arXiv}" in preprint_text
    assert article[0]["venue_type"] == "journal"
    assert import_bibtex(preprint_text)[0] | {"citation_key": ""} == {
        "citation_key": "", "title": "Example Title", "authors": ["Ada Lovelace"], "year": 2024,
        "arxiv": "2403.06764", "venue": "arXiv", "venue_type": "preprint"}


def test_workshop_is_recognised_from_its_venue() -> None:
    paper = make_paper(venue="CVPR Workshops", venue_type="workshop")
    assert import_bibtex(paper_bibtex(paper))[0]["venue_type"] == "workshop"


def test_citation_key_comes_from_author_year_and_id() -> None:
    assert citation_key(make_paper(id="fastv-2024", authors=["Liang Chen"])) == "chen2024fastv"
    assert citation_key(make_paper(id="tome-2023", year=2023, authors=["Daniel Bolya"])) == "bolya2023tome"
    assert citation_key(make_paper(id="x-2024", authors=["Sébastien Bubeck"])) == "bubeck2024x"
    assert citation_key(make_paper(id="y-2024", authors=["王伟"])) == "anon2024y"


def test_export_escapes_latex_specials_and_names() -> None:
    paper = make_paper(title="50% of {Tokens} & $5 #1 a_b ~x^2 \\ done", authors=["Íñigo Goiri", "Jürgen Müller"],
                       authors_truncated=True)
    text = paper_bibtex(paper)
    assert r"50{\%} of {\{}Tokens{\}} {\&} {\$}5 {\#}1 a{\_}b {\textasciitilde}x{\textasciicircum}2" in text
    assert r"author = {{\'I}{\~n}igo Goiri and J{\"u}rgen M{\"u}ller and others}" in text
    assert imported_view(import_bibtex(text)[0]) == exported_view(paper)


def test_duplicate_keys_are_refused() -> None:
    from tools.errors import SourceError

    first = make_paper(id="same-2024")
    with pytest.raises(SourceError, match="citation key 'lovelace2024same'"):
        export_bibtex([first, make_paper(id="same-2024", title="Another title")])


def test_export_verb_filters_by_node(tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "papers.bib"
    assert main(["--root", str(tiny_repo), "export-bibtex", "-o", str(out), "--node", "prefilling"]) == 0
    assert len(bibtexparser.parse_string(out.read_text(encoding="utf-8")).entries) == 1
    assert main(["--root", str(tiny_repo), "export-bibtex", "--node", "decoding"]) == 0
    assert "@" not in capsys.readouterr().out
    assert main(["--root", str(tiny_repo), "export-bibtex", "--node", "prefiling"]) == 1
    assert "did you mean 'prefilling'?" in capsys.readouterr().err


# Titles and names as real bibliographies have them: ASCII with every LaTeX special, accented Latin, CJK.
TEXT_CHARS = st.sampled_from(
    list("abcXYZ019 -:;,.?!()[]'`\"/+=<>|@*") + list("{}&%$#_~^\\") + list("éüñçøßåłŁžčÉÖÀ") + list("中文字한국어ひら")
)


def plain_text(max_size: int) -> st.SearchStrategy[str]:
    return (st.text(TEXT_CHARS, min_size=1, max_size=max_size)
            .map(lambda s: " ".join(s.split()))
            .filter(lambda s: s and "<" not in s))


def name_text() -> st.SearchStrategy[str]:
    # 'and' as a word and a trailing 'others' are BibTeX syntax in author lists; real names avoid them.
    return plain_text(30).filter(lambda s: s.lower() != "others" and " and " not in f" {s.lower()} ")


@settings(max_examples=150, deadline=None)
@given(title=plain_text(120), authors=st.lists(name_text(), min_size=1, max_size=4, unique=True),
       venue=plain_text(40), truncated=st.booleans())
def test_export_import_round_trip_property(title: str, authors: list[str], venue: str, truncated: bool) -> None:
    paper = make_paper(title=title, authors=authors, venue=venue, authors_truncated=truncated)
    text = export_bibtex([paper])
    library = bibtexparser.parse_string(text)
    assert not library.failed_blocks and len(library.entries) == 1
    (record,) = import_bibtex(text)
    assert imported_view(record) == exported_view(paper)
