"""BibTeX export and import with bibtexparser v2.

Export writes one entry per paper: `@inproceedings` (conference, workshop), `@article` (journal) or `@misc`
(preprint), with `eprint`/`archivePrefix` whenever an arXiv id is known. Text fields (title, authors, venue)
are LaTeX-encoded with pylatexenc (the encoder bibtexparser's own middleware uses) plus a few rules that keep
the encoding reversible (no `--`, ` `` ` or `''` ligatures, ASCII `^` and `"`); identifiers and URLs are written
verbatim. Titles are wrapped in an extra pair of braces so bibliography styles keep their capitalisation.
Import reverses all of this, so `import_bibtex(export_bibtex(papers))` gives back every field export writes.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable

import bibtexparser
from bibtexparser.library import Library
from bibtexparser.middlewares import SeparateCoAuthors, SplitNameParts, default_unparse_stack
from bibtexparser.model import Entry, Field
from pylatexenc.latex2text import LatexNodes2Text, MacroTextSpec, get_default_latex_context_db
from pylatexenc.latexencode import RULE_REGEX, UnicodeToLatexConversionRule, UnicodeToLatexEncoder

from tools.errors import SourceError
from tools.models import Paper, VenueType

# pylatexenc has no LaTeX for CJK and similar scripts; it keeps them as UTF-8 (fine for biber/XeLaTeX) and
# would log one warning per character.
logging.getLogger("pylatexenc.latexencode").setLevel(logging.ERROR)

# Replacements are wrapped in braces by the encoder ('braces-all'), which is what stops the ligatures.
_REVERSIBLE = UnicodeToLatexConversionRule(
    rule_type=RULE_REGEX,
    rule=[
        (re.compile(r"-(?=-)"), "-"),  # '--' would become an en dash
        (re.compile(r"`(?=`)"), "`"),  # '``' would become an opening double quote
        (re.compile(r"'(?=')"), "'"),
        (re.compile(r"([?!])(?=`)"), r"\1"),  # '?`' and '!`' would become inverted marks
        (re.compile(r"\^"), r"\\textasciicircum"),
        (re.compile(r'"'), r"\\textquotedbl"),
    ],
)
_ENCODER = UnicodeToLatexEncoder(
    conversion_rules=[_REVERSIBLE, "defaults"],
    replacement_latex_protection="braces-all",  # `{\~n}`: BibTeX reads a bare `~` as a space between name parts
    unknown_char_warning=False,
)


def _decoder() -> LatexNodes2Text:
    context = get_default_latex_context_db()
    context.add_context_category(
        "reversible-ascii",
        prepend=True,
        macros=[MacroTextSpec("textasciicircum", "^"), MacroTextSpec("textquotedbl", '"')],
    )
    return LatexNodes2Text(latex_context=context, math_mode="verbatim", strict_latex_spaces=True)


_DECODER = _decoder()
ENTRY_TYPES = {"conference": "inproceedings", "workshop": "inproceedings", "journal": "article", "preprint": "misc"}
VENUE_FIELDS = {"inproceedings": "booktitle", "article": "journal", "misc": "howpublished"}


def latex_encode(text: str) -> str:
    return _ENCODER.unicode_to_latex(text)


def latex_decode(text: str) -> str:
    return unicodedata.normalize("NFC", _DECODER.latex_to_text(text))


def _ascii_word(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return re.sub(r"[^a-z0-9]", "", folded.encode("ascii", "ignore").decode().lower())


def citation_key(paper: Paper) -> str:
    """`<first author's family name><year><id without its year>`, e.g. 'chen2024fastv' for fastv-2024.

    Built from the paper id, which is unique, so keys stay stable when other papers are added.
    """
    family = _ascii_word(paper.authors[0].split()[-1]) or "anon"
    dated = re.match(r"^(.+)-(\d{4})$", paper.id)
    # The id's own year, not `year`: a preprint's year may change when it is published, its key must not.
    stem, year = (dated.group(1), dated.group(2)) if dated else (paper.id, str(paper.year))
    return f"{family}{year}{stem}"


def _author_field(paper: Paper) -> str:
    names = []
    for name in paper.authors:
        encoded = latex_encode(name)
        # A comma or a stand-alone 'and' would split the name; braces keep it whole.
        names.append(f"{{{encoded}}}" if "," in name or re.search(r"\band\b", name, re.I) else encoded)
    if paper.authors_truncated:
        names.append("others")
    return " and ".join(names)


def paper_entry(paper: Paper) -> Entry:
    entry_type = ENTRY_TYPES[paper.venue_type]
    fields = [
        Field("title", "{" + latex_encode(paper.title) + "}"),
        Field("author", _author_field(paper)),
        Field("year", str(paper.year)),
    ]
    if not (entry_type == "misc" and paper.venue == "arXiv" and paper.arxiv):
        fields.append(Field(VENUE_FIELDS[entry_type], latex_encode(paper.venue)))
    if paper.arxiv:
        fields += [Field("eprint", paper.arxiv), Field("archiveprefix", "arXiv")]
    if paper.doi:
        fields.append(Field("doi", paper.doi))
    if paper.url:
        fields.append(Field("url", str(paper.url)))
    return Entry(entry_type, citation_key(paper), fields)


def _write(entries: Iterable[Entry]) -> str:
    library = Library(list(entries))
    # The library is thrown away after writing, so the writer may change its blocks instead of copying them.
    return bibtexparser.write_string(library, unparse_stack=default_unparse_stack(allow_inplace_modification=True))


def paper_bibtex(paper: Paper) -> str:
    """One entry, for a paper's page on the site."""
    return _write([paper_entry(paper)]).strip() + "\n"


def export_bibtex(papers: Iterable[Paper]) -> str:
    """Every paper as one .bib text, sorted by citation key; raises `SourceError` if two keys collide."""
    entries = sorted((paper_entry(p) for p in papers), key=lambda e: e.key)
    for first, second in zip(entries, entries[1:], strict=False):
        if first.key == second.key:
            raise SourceError(f"two papers get the citation key '{first.key}'; rename one of their ids")
    header = "% Generated from papers/*.yaml by `python -m tools export-bibtex`; do not edit by hand.\n\n"
    return header + _write(entries)


def _name(parts: SplitNameParts | object) -> str:
    ordered = [*parts.first, *parts.von, *parts.last, *parts.jr]
    return latex_decode(" ".join(ordered))


def _entry_dict(entry: Entry) -> dict:
    fields = {field.key.lower(): field.value for field in entry.fields}
    record: dict = {"citation_key": entry.key}
    if "title" in fields:
        record["title"] = " ".join(latex_decode(fields["title"]).split())
    authors = fields.get("author") or []
    if authors:
        names = [_name(name) for name in authors]
        if names[-1].lower() == "others":
            names.pop()
            record["authors_truncated"] = True
        record["authors"] = names
    year = re.search(r"\d{4}", str(fields.get("year", "")))
    if year:
        record["year"] = int(year.group())
    entry_type = entry.entry_type.lower()
    venue = fields.get("booktitle") or fields.get("journal") or fields.get("howpublished")
    eprint = fields.get("eprint")
    is_arxiv = eprint and str(fields.get("archiveprefix", "arXiv")).lower() == "arxiv"
    if is_arxiv:
        record["arxiv"] = re.sub(r"^arxiv:|v\d+$", "", eprint.strip(), flags=re.I)
    if venue:
        record["venue"] = latex_decode(venue)
    elif is_arxiv:
        record["venue"] = "arXiv"
    if entry_type == "article" and record.get("venue", "").lower() != "arxiv":
        record["venue_type"] = VenueType.journal.value
    elif entry_type in {"inproceedings", "conference", "incollection"}:
        workshop = "workshop" in record.get("venue", "").lower()
        record["venue_type"] = VenueType.workshop.value if workshop else VenueType.conference.value
    else:
        record["venue_type"] = VenueType.preprint.value
    if fields.get("doi"):
        record["doi"] = re.sub(r"^https?://(dx\.)?doi\.org/", "", fields["doi"].strip())
    if fields.get("url"):
        record["url"] = fields["url"].strip()
    return record


def import_bibtex(text: str) -> list[dict]:
    """Entries of a .bib text as dicts with Paper field names (plus `citation_key`); only fields the entry has.

    Raises `SourceError` naming the line of any block bibtexparser cannot read.
    """
    library = bibtexparser.parse_string(text, append_middleware=[SeparateCoAuthors(), SplitNameParts()])
    if library.failed_blocks:
        block = library.failed_blocks[0]
        line = (block.start_line or 0) + 1
        raise SourceError(f"BibTeX line {line}: cannot parse this entry ({block.error}); fix its braces or commas")
    return [_entry_dict(entry) for entry in library.entries]
