"""Fetching what arXiv and Crossref know about a work, as records for `tools.scaffold`.

The endpoints can be pointed elsewhere (tests serve recorded responses on loopback) with the environment
variables `ARXIV_API_URL` and `CROSSREF_API_URL`. Every failure to reach or read a source becomes a
`SourceError`, which the CLI prints as one line with exit status 2.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from urllib.parse import quote

import arxiv
import httpx
import requests

from tools.bibtex import import_bibtex
from tools.errors import SourceError, UsageError
from tools.models import ARXIV_PATTERN, DOI_PATTERN, PLACEHOLDER

ARXIV_API_URL = "https://export.arxiv.org/api/query"
CROSSREF_API_URL = "https://api.crossref.org/works"
TIMEOUT_S = 20.0
GITHUB_URL = re.compile(r"https?://github\.com/[\w.-]+/[\w.-]+")
KNOWN_VENUES = re.compile(
    r"\b(CVPR|ICCV|ECCV|WACV|BMVC|NeurIPS|ICLR|ICML|AAAI|IJCAI|ACL|EMNLP|NAACL|COLING|ACM MM|MLSys|ISCA|"
    r"MICRO|HPCA|ASPLOS|OSDI|SOSP|EuroSys|TPAMI|IJCV|TIP|TMLR|JMLR)\b"
)


def arxiv_id(text: str) -> str:
    """'arXiv:2403.06764v2' or 'https://arxiv.org/abs/2403.06764' -> '2403.06764'."""
    bare = re.sub(r"^(?:https?://arxiv\.org/(?:abs|pdf)/|arxiv:)", "", text.strip(), flags=re.I)
    bare = re.sub(r"(?:v\d+)?(?:\.pdf)?$", "", bare)
    if not re.match(ARXIV_PATTERN, bare):
        raise UsageError(f"'{text}' is not an arXiv id; give one like 2403.06764")
    return bare


def bare_doi(text: str) -> str:
    doi = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)", "", text.strip(), flags=re.I)
    if not re.match(DOI_PATTERN, doi):
        raise UsageError(f"'{text}' is not a DOI; give one like 10.1109/CVPR52733.2024.01234")
    return doi


class _TimeoutSession(requests.Session):
    """The arxiv package sends its requests without a timeout; this session adds one."""

    def request(self, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", TIMEOUT_S)
        return super().request(*args, **kwargs)


def fetch_arxiv(identifier: str) -> dict:
    paper_id = arxiv_id(identifier)
    client = arxiv.Client(page_size=1, delay_seconds=0.0, num_retries=1)
    client.query_url_format = os.environ.get("ARXIV_API_URL", ARXIV_API_URL) + "?{}"
    client._session = _TimeoutSession()  # noqa: SLF001 - the package offers no other way to set a timeout
    try:
        results = list(client.results(arxiv.Search(id_list=[paper_id], max_results=1)))
    except (arxiv.ArxivError, requests.RequestException) as exc:
        raise SourceError(f"cannot fetch arXiv {paper_id}: {_reason(exc)}; check the network or use "
                          "--bibtex FILE") from None
    if not results:
        raise SourceError(f"arXiv has no paper {paper_id}; check the id")
    result = results[0]
    record = {
        "title": " ".join(result.title.split()),
        "authors": [" ".join(author.name.split()) for author in result.authors],
        "year": result.published.year,
        "venue": "arXiv",
        "venue_type": "preprint",
        "arxiv": paper_id,
        "doi": result.doi or None,
        "verified_from": [f"https://arxiv.org/abs/{paper_id}"],
        "announced": result.published.date(),
    }
    code = GITHUB_URL.search(f"{result.comment or ''} {result.summary or ''}")
    if code:
        record["code"] = code.group().rstrip(".")
    if result.journal_ref:
        record["notes"] = f"arXiv journal reference: {' '.join(result.journal_ref.split())}"
    return record


def _reason(exc: Exception) -> str:
    if isinstance(exc, arxiv.HTTPError):
        return f"HTTP status {exc.status}"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP status {exc.response.status_code}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) < 160 else type(exc).__name__


def _plain(text: str) -> str:
    """Crossref titles carry JATS/HTML markup (<i>, <sub>) and entities; keep the words."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split())


def _crossref_venue(message: dict) -> tuple[str, str]:
    kinds = {"journal-article": "journal", "proceedings-article": "conference", "book-chapter": "conference",
             "posted-content": "preprint"}
    venue_type = kinds.get(message.get("type", ""), f"{PLACEHOLDER} set conference, journal, workshop or preprint")
    names = [_plain(n) for n in message.get("short-container-title", []) + message.get("container-title", [])]
    names += [_plain(message["event"]["name"])] if isinstance(message.get("event"), dict) else []
    for name in names:
        known = KNOWN_VENUES.search(name)
        if known:
            return known.group(), venue_type
    short = [n for n in names if len(n) <= 30]
    if short:
        return short[0], venue_type
    hint = f" (Crossref says '{names[0][:40]}')" if names else ""
    return f"{PLACEHOLDER} set a short venue name{hint}", venue_type


def fetch_crossref(identifier: str) -> dict:
    doi = bare_doi(identifier)
    url = f"{os.environ.get('CROSSREF_API_URL', CROSSREF_API_URL)}/{quote(doi, safe='/')}"
    try:
        response = httpx.get(url, timeout=TIMEOUT_S, follow_redirects=True,
                             headers={"User-Agent": "efficient-lvlm-inference-tools/0.1"})
        if response.status_code == 404:
            raise SourceError(f"Crossref has no record of DOI {doi}; check the DOI")
        response.raise_for_status()
        message = response.json()["message"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise SourceError(f"cannot fetch DOI {doi} from Crossref: {_reason(exc)}; check the network or use "
                          "--bibtex FILE") from None
    venue, venue_type = _crossref_venue(message)
    authors = [" ".join(f"{a.get('given', '')} {a.get('family', '')}".split()) or a.get("name", "")
               for a in message.get("author", [])]
    date_parts = (message.get("published") or message.get("issued") or {}).get("date-parts") or [[None]]
    record = {
        "title": _plain((message.get("title") or [""])[0]),
        "authors": [a for a in authors if a],
        "year": date_parts[0][0],
        "venue": venue,
        "venue_type": venue_type,
        "doi": message.get("DOI", doi),
        "verified_from": [f"https://doi.org/{message.get('DOI', doi)}"],
    }
    return {key: value for key, value in record.items() if value}


def read_bibtex(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    records = import_bibtex(text)
    if not records:
        raise SourceError(f"{path} holds no BibTeX entry")
    return records
