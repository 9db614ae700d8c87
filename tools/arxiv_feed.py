"""arXiv API Atom feeds as `Candidate` records: from the API (through the `arxiv` package) or from saved files.

Every feed is parsed strictly before it is used: an HTML error page, truncated XML, an API error entry or a
malformed id becomes a `SourceError` naming the source and what to do, never a half-read list. The API's base URL
can be pointed at a loopback server with `ARXIV_API_URL` (the tests do).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import arxiv
import requests

from tools.errors import SourceError
from tools.sources import ARXIV_API_URL, TIMEOUT_S

ATOM = "{http://www.w3.org/2005/Atom}"
ARXIV_NS = "{http://arxiv.org/schemas/atom}"
ENTRY_ID = re.compile(r"arxiv\.org/abs/(\d{4}\.\d{4,5})(?:v\d+)?$")
CATEGORIES = ("cs.CV", "cs.CL", "cs.LG", "cs.AI", "cs.DC", "cs.AR")
PAGE_SIZE = 100
DELAY_S = 3.0  # arXiv's terms of use: at most one request every three seconds
RETRIES = 3


@dataclass(frozen=True)
class Candidate:
    """One arXiv entry as the feed gives it."""

    arxiv: str
    title: str
    authors: tuple[str, ...]
    published: dt.date
    summary: str
    categories: tuple[str, ...]
    comment: str = ""

    @property
    def text(self) -> str:
        """What the relevance and placement models read."""
        return f"{self.title}. {self.summary}"


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def parse_feed(content: bytes, origin: str) -> list[Candidate]:
    """The entries of one arXiv Atom response; `origin` (a file name or URL) is named in every error."""
    stripped = content.lstrip()
    if not stripped:
        raise SourceError(f"{origin} is empty, not an arXiv Atom feed; fetch it again")
    if stripped[:15].lower().startswith((b"<!doctype html", b"<html")):
        raise SourceError(f"{origin} is an HTML page, not an arXiv Atom feed (an error or rate-limit page?); "
                          "wait a few minutes and try again")
    try:
        root = ET.fromstring(content)  # noqa: S314 - ElementTree does not expand external entities
    except ET.ParseError as exc:
        raise SourceError(f"{origin} is not well-formed XML ({exc}); the response was cut short or is not "
                          "a feed: fetch it again") from None
    if root.tag != f"{ATOM}feed":
        raise SourceError(f"{origin} is XML but not an Atom feed (root element {root.tag!r}); give an arXiv API "
                          "response")
    candidates = []
    for entry in root.iter(f"{ATOM}entry"):
        entry_id = _clean(entry.findtext(f"{ATOM}id"))
        title = _clean(entry.findtext(f"{ATOM}title"))
        if "api/errors" in entry_id or title == "Error":
            raise SourceError(f"{origin}: the arXiv API answered with an error: "
                              f"{_clean(entry.findtext(f'{ATOM}summary'))}; check the query")
        match = ENTRY_ID.search(entry_id)
        if not match:
            raise SourceError(f"{origin}: entry id {entry_id!r} is not an arXiv abstract URL with a new-style id "
                              "like http://arxiv.org/abs/2403.06764v1; the feed is damaged")
        published = _clean(entry.findtext(f"{ATOM}published"))
        try:
            date = dt.date.fromisoformat(published[:10])
        except ValueError:
            raise SourceError(f"{origin}: entry {match.group(1)} has no readable <published> date "
                              f"({published!r}); the feed is damaged") from None
        candidates.append(Candidate(
            arxiv=match.group(1),
            title=title,
            authors=tuple(_clean(a.findtext(f"{ATOM}name")) for a in entry.iter(f"{ATOM}author")),
            published=date,
            summary=_clean(entry.findtext(f"{ATOM}summary")),
            categories=tuple(c.get("term", "") for c in entry.iter(f"{ATOM}category")),
            comment=_clean(entry.findtext(f"{ARXIV_NS}comment")),
        ))
    return candidates


def read_feeds(paths: list[Path]) -> list[Candidate]:
    """Entries of saved API responses, first occurrence of each id kept."""
    found: dict[str, Candidate] = {}
    for path in paths:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read feed {path}: {exc.strerror or exc}") from None
        for candidate in parse_feed(content, str(path)):
            found.setdefault(candidate.arxiv, candidate)
    return list(found.values())


def build_query(phrases: list[str], since: dt.date, until: dt.date) -> str:
    """arXiv search query: the categories, any phrase in title or abstract, the submission window."""
    categories = " OR ".join(f"cat:{c}" for c in CATEGORIES)
    terms = " OR ".join(f'abs:"{p}"' for p in phrases)
    window = f"submittedDate:[{since:%Y%m%d}0000 TO {until:%Y%m%d}2359]"
    return f"({categories}) AND ({terms}) AND {window}"


class _CheckedSession(requests.Session):
    """A session that refuses, with a clear `SourceError`, any answer that is not a well-formed Atom feed."""

    def request(self, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", TIMEOUT_S)
        response = super().request(*args, **kwargs)
        if response.status_code == 200:
            parse_feed(response.content, "the arXiv API")
        return response


def query_arxiv(phrases: list[str], since: dt.date, until: dt.date, limit: int) -> list[Candidate]:
    """New entries in the window whose abstract has any of the phrases, newest first, at most `limit`."""
    client = arxiv.Client(page_size=PAGE_SIZE, delay_seconds=DELAY_S, num_retries=RETRIES)
    client.query_url_format = os.environ.get("ARXIV_API_URL", ARXIV_API_URL) + "?{}"
    client._session = _CheckedSession()  # noqa: SLF001 - the package offers no other hook for a session
    search = arxiv.Search(query=build_query(phrases, since, until), max_results=limit,
                          sort_by=arxiv.SortCriterion.SubmittedDate)
    try:
        results = list(client.results(search))
    except arxiv.HTTPError as exc:
        hint = "arXiv asks clients to slow down; wait a few minutes" if exc.status in (429, 503) else \
            "arXiv had a problem; try again later"
        raise SourceError(f"the arXiv API answered HTTP {exc.status}; {hint}") from None
    except (arxiv.ArxivError, requests.RequestException) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise SourceError(f"cannot reach the arXiv API ({reason}); check the network, or run offline with "
                          "--from-feed FILE") from None
    candidates = []
    for result in results:
        match = ENTRY_ID.search(result.entry_id)
        if not match:
            continue  # old-style ids (cs/0101001) predate anything this repository tracks
        candidates.append(Candidate(
            arxiv=match.group(1),
            title=_clean(result.title),
            authors=tuple(_clean(a.name) for a in result.authors),
            published=result.published.date(),
            summary=_clean(result.summary),
            categories=tuple(result.categories),
            comment=_clean(result.comment),
        ))
    return candidates
