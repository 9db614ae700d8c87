"""Citations of papers in the formats reference managers read: CSL-JSON, RIS and Highwire `citation_*` tags.

BibTeX lives in `tools.bibtex`; every format here uses its citation keys as ids, so one paper has one key in all
of them. Author names are stored as 'Given Family'; the last word is taken as the family name, which is what
the paper files can tell (a family name of several words is split wrongly, as BibTeX's own 'First Last' form is).
"""

from __future__ import annotations

import json

from tools.bibtex import citation_key
from tools.models import Paper, VenueType

CSL_TYPES = {VenueType.conference.value: "paper-conference", VenueType.workshop.value: "paper-conference",
             VenueType.journal.value: "article-journal", VenueType.preprint.value: "article"}
RIS_TYPES = {VenueType.conference.value: "CONF", VenueType.workshop.value: "CONF",
             VenueType.journal.value: "JOUR", VenueType.preprint.value: "UNPB"}


def split_name(name: str) -> tuple[str, str]:
    """'Liang Chen' -> ('Liang', 'Chen'); a single word is a family name."""
    given, _, family = name.rpartition(" ")
    return given, family


def page_url(paper: Paper) -> str | None:
    if paper.url:
        return str(paper.url)
    if paper.arxiv:
        return f"https://arxiv.org/abs/{paper.arxiv}"
    return f"https://doi.org/{paper.doi}" if paper.doi else None


def csl_item(paper: Paper) -> dict:
    item: dict = {
        "id": citation_key(paper),
        "type": CSL_TYPES[paper.venue_type],
        "title": paper.title,
        "author": [{"given": given, "family": family} if given else {"family": family}
                   for given, family in map(split_name, paper.authors)],
        "issued": {"date-parts": [[paper.year]]},
    }
    if paper.venue_type == VenueType.preprint.value:
        item["publisher"] = paper.venue
        if paper.arxiv:
            item["number"] = f"arXiv:{paper.arxiv}"
    else:
        item["container-title"] = paper.venue
    if paper.doi:
        item["DOI"] = paper.doi
    url = page_url(paper)
    if url:
        item["URL"] = url
    return item


def csl_json(papers: list[Paper]) -> str:
    return json.dumps([csl_item(p) for p in papers], ensure_ascii=False, indent=1) + "\n"


def ris_entry(paper: Paper) -> str:
    lines = [("TY", RIS_TYPES[paper.venue_type]), ("ID", citation_key(paper)), ("TI", paper.title)]
    for given, family in map(split_name, paper.authors):
        lines.append(("AU", f"{family}, {given}" if given else family))
    lines += [("PY", str(paper.year)), ("T2", paper.venue)]
    if paper.doi:
        lines.append(("DO", paper.doi))
    url = page_url(paper)
    if url:
        lines.append(("UR", url))
    lines.append(("ER", ""))
    return "".join(f"{tag}  - {value}".rstrip() + "\n" for tag, value in lines)


def ris(papers: list[Paper]) -> str:
    return "\n".join(ris_entry(p) for p in papers)


def citation_meta(paper: Paper) -> list[tuple[str, str]]:
    """The Highwire Press tags Zotero's connector and Google Scholar read from a paper's page."""
    tags = [("citation_title", paper.title)]
    tags += [("citation_author", name) for name in paper.authors]
    tags.append(("citation_publication_date", (paper.announced.isoformat().replace("-", "/")
                                              if paper.announced and paper.announced.year == paper.year
                                              else str(paper.year))))
    if paper.venue_type == VenueType.journal.value:
        tags.append(("citation_journal_title", paper.venue))
    elif paper.venue_type != VenueType.preprint.value:
        tags.append(("citation_conference_title", paper.venue))
    if paper.arxiv:
        tags += [("citation_arxiv_id", paper.arxiv), ("citation_pdf_url", f"https://arxiv.org/pdf/{paper.arxiv}")]
    if paper.doi:
        tags.append(("citation_doi", paper.doi))
    url = page_url(paper)
    if url:
        tags.append(("citation_abstract_html_url", url))
    return tags
