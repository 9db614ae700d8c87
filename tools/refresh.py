"""`refresh`: keeps the metadata of existing entries current, editing the paper files in place.

    python -m tools refresh [--only authors|venues|code] [--ids ID ...] [--dry-run] [--offline]

- authors: an entry whose author list was cut short (`authors_truncated`), or is a strict beginning of arXiv's,
  gets arXiv's full list;
- venues: an entry still listed as an arXiv preprint gets the venue Semantic Scholar's batch endpoint knows for
  its arXiv id, with DBLP's search by title as the fallback;
- code: an entry without `code` gets the GitHub URL its arXiv comment or abstract names.
Each change adds the page it came from to `verified_from`. Every answer is fetched before anything is written
and cached on disk (requests-cache, under the user cache directory; `--offline` answers from the cache only).
Files are edited with ruamel.yaml's round trip, so comments, key order and quoting stay as they are; each new
text is validated before it replaces the file through a temporary file and a rename, so a failure never leaves
a half-written file. Endpoints can be pointed elsewhere with ARXIV_API_URL, SEMANTIC_SCHOLAR_API_URL and
DBLP_API_URL (the tests serve recorded answers on loopback).
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import requests_cache
import yaml as pyyaml
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from tools.arxiv_feed import Candidate, parse_feed
from tools.checks import normalise_title
from tools.errors import SourceError, ToolError, display_path
from tools.files import write_atomically
from tools.loading import SafeLoader
from tools.models import Paper
from tools.repository import load_repository
from tools.sources import ARXIV_API_URL, GITHUB_URL, KNOWN_VENUES, TIMEOUT_S

SEMANTIC_SCHOLAR_API_URL = "https://api.semanticscholar.org/graph/v1"
DBLP_API_URL = "https://dblp.org/search/publ/api"
ARXIV_BATCH = 100  # ids per arXiv API request
S2_BATCH = 500  # the batch endpoint's limit
POLITE_DELAY_S = {"arXiv": 3.0, "Semantic Scholar": 1.0, "DBLP": 1.0}  # between requests not answered by the cache
FIELD_ORDER = list(Paper.model_fields)
ASPECTS = ("authors", "venues", "code")

# Full venue names as Semantic Scholar and DBLP write them -> the short names the repository uses.
VENUE_NAMES = {
    "neural information processing systems": "NeurIPS",
    "international conference on learning representations": "ICLR",
    "international conference on machine learning": "ICML",
    "computer vision and pattern recognition": "CVPR",
    "international conference on computer vision": "ICCV",
    "european conference on computer vision": "ECCV",
    "aaai conference on artificial intelligence": "AAAI",
    "annual meeting of the association for computational linguistics": "ACL",
    "conference on empirical methods in natural language processing": "EMNLP",
    "north american chapter of the association for computational linguistics": "NAACL",
    "acm multimedia": "ACM MM",
    "trans. mach. learn. res.": "TMLR",
    "transactions on machine learning research": "TMLR",
    "ieee transactions on pattern analysis and machine intelligence": "TPAMI",
    "international journal of computer vision": "IJCV",
}
PREPRINT_VENUES = re.compile(r"^(arxiv(\.org)?|corr|biorxiv|ssrn)$", re.IGNORECASE)


@dataclass(frozen=True)
class Venue:
    name: str
    venue_type: str
    year: int
    page: str


@dataclass
class Change:
    """What refresh would change in one file, and the pages that say so."""

    paper_id: str
    path: Path
    updates: dict[str, Any] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)
    aspects: list[str] = field(default_factory=list)


def short_venue(name: str) -> str | None:
    """'Annual Meeting of the Association for Computational Linguistics' -> 'ACL'; None for preprint servers."""
    name = " ".join(name.split())
    if not name or PREPRINT_VENUES.match(name):
        return None
    lowered = name.casefold()
    for full, short in VENUE_NAMES.items():
        if full in lowered:
            return short
    known = KNOWN_VENUES.search(name)
    return known.group() if known else None


def cache_path() -> Path:
    base = os.environ.get("EFFICIENT_LVLM_HTTP_CACHE")
    if base:
        return Path(base)
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "efficient-lvlm-inference" / "http"


class Sources:
    """arXiv, Semantic Scholar and DBLP through one cached HTTP session; every failure is a `SourceError`."""

    def __init__(self, offline: bool):
        path = cache_path()
        path.mkdir(parents=True, exist_ok=True)
        self.session = requests_cache.CachedSession(str(path / "responses"), backend="sqlite",
                                                    allowable_methods=("GET", "POST"), expire_after=7 * 86400)
        self.session.settings.only_if_cached = offline
        self.session.headers["User-Agent"] = "efficient-lvlm-inference-tools/0.1 (refresh)"
        self.offline = offline
        self.last_request: dict[str, float] = {}

    def _request(self, source: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        wait = self.last_request.get(source, 0) + POLITE_DELAY_S[source] - time.monotonic()
        if wait > 0 and not self.offline:
            time.sleep(wait)
        try:
            response = self.session.request(method, url, timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise SourceError(f"cannot reach {source} ({reason}); check the network, or use --offline to answer "
                              "from the cache") from None
        if not getattr(response, "from_cache", False):
            self.last_request[source] = time.monotonic()
        if response.status_code == 504 and self.offline:
            raise SourceError(f"{source}: no cached answer for {url}; run once without --offline to fill the cache")
        if response.status_code == 429:
            raise SourceError(f"{source} answered HTTP 429 (too many requests); wait a few minutes and try again")
        if response.status_code >= 400:
            raise SourceError(f"{source} answered HTTP {response.status_code}; try again later")
        return response

    def _json(self, source: str, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            start = response.text.lstrip()[:15].lower()
            kind = "an HTML page" if start.startswith(("<!doctype html", "<html")) else "malformed or cut-short JSON"
            raise SourceError(f"{source} sent {kind} instead of JSON; try again later") from None

    def arxiv(self, ids: list[str]) -> dict[str, Candidate]:
        base = os.environ.get("ARXIV_API_URL", ARXIV_API_URL)
        found: dict[str, Candidate] = {}
        for start in range(0, len(ids), ARXIV_BATCH):
            batch = ids[start:start + ARXIV_BATCH]
            response = self._request("arXiv", "GET", base,
                                     params={"id_list": ",".join(batch), "max_results": len(batch)})
            for candidate in parse_feed(response.content, "the arXiv API"):
                found[candidate.arxiv] = candidate
        return found

    def semantic_scholar(self, ids: list[str]) -> dict[str, Venue]:
        base = os.environ.get("SEMANTIC_SCHOLAR_API_URL", SEMANTIC_SCHOLAR_API_URL)
        venues: dict[str, Venue] = {}
        for start in range(0, len(ids), S2_BATCH):
            batch = ids[start:start + S2_BATCH]
            response = self._request("Semantic Scholar", "POST", f"{base}/paper/batch",
                                     params={"fields": "title,venue,year,publicationVenue,externalIds"},
                                     json={"ids": [f"ARXIV:{arxiv}" for arxiv in batch]})
            answer = self._json("Semantic Scholar", response)
            if not isinstance(answer, list) or len(answer) != len(batch):
                raise SourceError("Semantic Scholar's batch answer does not match the ids asked for; try again later")
            for arxiv, record in zip(batch, answer, strict=True):
                if not isinstance(record, dict):
                    continue  # null: Semantic Scholar does not know the id
                publication = record.get("publicationVenue") or {}
                name = short_venue(record.get("venue") or "") or short_venue(publication.get("name") or "")
                if name and isinstance(record.get("year"), int):
                    kind = "workshop" if "workshop" in (record.get("venue") or "").lower() else \
                        "journal" if publication.get("type") == "journal" else "conference"
                    venues[arxiv] = Venue(name, kind, record["year"], f"https://www.semanticscholar.org/arxiv/{arxiv}")
        return venues

    def dblp(self, title: str) -> Venue | None:
        base = os.environ.get("DBLP_API_URL", DBLP_API_URL)
        response = self._request("DBLP", "GET", base, params={"q": title, "format": "json", "h": 10})
        answer = self._json("DBLP", response)
        try:
            hits = answer["result"]["hits"].get("hit", [])
        except (KeyError, TypeError, AttributeError):
            raise SourceError("DBLP's answer has no result.hits; the format changed or the answer is damaged") from None
        wanted = normalise_title(title)
        for hit in hits:
            info = hit.get("info", {}) if isinstance(hit, dict) else {}
            name = short_venue(str(info.get("venue") or ""))
            if not name or normalise_title(str(info.get("title", ""))) != wanted:
                continue
            kind = {"Journal Articles": "journal"}.get(info.get("type"), "conference")
            if "workshop" in str(info.get("venue", "")).lower():
                kind = "workshop"
            page = info.get("url") or info.get("ee") or f"{base}?q={title}"
            try:
                return Venue(name, kind, int(info.get("year")), str(page))
            except (TypeError, ValueError):
                continue
        return None


def plan(repository: Any, aspects: tuple[str, ...], ids: set[str] | None, sources: Sources) -> list[Change]:
    """Everything refresh would change, worked out from the sources before any file is touched."""
    papers = [p for p in repository.papers if p.arxiv and (ids is None or p.id in ids)]
    changes = {p.id: Change(p.id, repository.paths[p.id]) for p in papers}
    if "authors" in aspects or "code" in aspects:
        records = sources.arxiv([p.arxiv for p in papers])
        for paper in papers:
            record = records.get(paper.arxiv)
            if record is None:
                continue
            change = changes[paper.id]
            names = list(record.authors)
            if "authors" in aspects and names and names != paper.authors and (
                    paper.authors_truncated or names[:len(paper.authors)] == paper.authors):
                change.updates["authors"] = names
                change.drop.append("authors_truncated")
                change.aspects.append("authors")
                change.pages.append(f"https://arxiv.org/abs/{paper.arxiv}")
            code = GITHUB_URL.search(f"{record.comment} {record.summary}")
            if "code" in aspects and paper.code is None and code:
                change.updates["code"] = code.group().rstrip(".")
                change.aspects.append("code")
                change.pages.append(f"https://arxiv.org/abs/{paper.arxiv}")
    if "venues" in aspects:
        preprints = [p for p in papers if p.venue_type == "preprint"]
        venues = sources.semantic_scholar([p.arxiv for p in preprints])
        for paper in preprints:
            venue = venues.get(paper.arxiv) or sources.dblp(paper.title)
            if venue:
                change = changes[paper.id]
                change.updates.update(venue=venue.name, venue_type=venue.venue_type, year=venue.year)
                change.aspects.append("venues")
                change.pages.append(venue.page)
    return [c for c in changes.values() if c.aspects]


def round_trip() -> YAML:
    editor = YAML()
    editor.preserve_quotes = True
    editor.width = 4096  # never fold a long title or URL that the file keeps on one line
    editor.indent(mapping=2, sequence=4, offset=2)
    return editor


def _insert_in_order(data: CommentedMap, key: str, value: Any) -> None:
    """Set `key`, placing a new key where the schema's field order puts it."""
    if key in data:
        data[key] = value
        return
    later = FIELD_ORDER[FIELD_ORDER.index(key) + 1:]
    position = next((i for i, existing in enumerate(data) if existing in later), len(data))
    data.insert(position, key, value)


def apply(change: Change, text: str) -> str:
    """The file's text with the change made; everything else as it was."""
    editor = round_trip()
    data = editor.load(text)
    for key in change.drop:
        data.pop(key, None)
    for key, value in change.updates.items():
        _insert_in_order(data, key, CommentedSeq(value) if isinstance(value, list) else value)
    pages = list(data.get("verified_from") or [])
    new_pages = [page for page in dict.fromkeys(change.pages) if page not in pages]
    if new_pages:
        if "verified_from" in data:
            data["verified_from"].extend(new_pages)
        else:
            _insert_in_order(data, "verified_from", CommentedSeq(new_pages))
    out = io.StringIO()
    editor.dump(data, out)
    return out.getvalue()


def check_text(text: str, shown: str) -> None:
    try:
        Paper.model_validate(pyyaml.load(text, Loader=SafeLoader))  # noqa: S506 - the safe C loader
    except (ValidationError, pyyaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ToolError(f"refusing to write {shown}: the refreshed entry would not validate ({first}); "
                        "nothing was written") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "refresh",
        help="complete author lists, find venues of published preprints and code links, editing files in place",
        description="Complete cut-short author lists from arXiv, find the venue of entries still listed as "
                    "preprints (Semantic Scholar, then DBLP) and the code URL arXiv names; print a diff and "
                    "write the validated files. Exit 2 when a source cannot be reached or answers badly; then "
                    "nothing is written.",
    )
    parser.add_argument("--only", choices=ASPECTS, help="refresh only this aspect")
    parser.add_argument("--ids", nargs="+", metavar="ID", help="only these paper ids (file names without .yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    parser.add_argument("--offline", action="store_true", help="answer from the on-disk cache only")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repository = load_repository(args.root)
    if args.ids:
        unknown = sorted(set(args.ids) - set(repository.paths))
        if unknown:
            raise ToolError(f"no paper file for {', '.join(unknown)}; give ids as in papers/<id>.yaml")
    aspects = (args.only,) if args.only else ASPECTS
    changes = plan(repository, aspects, set(args.ids) if args.ids else None, Sources(args.offline))
    texts = {}
    for change in changes:
        shown = display_path(change.path, args.root)
        before = change.path.read_text(encoding="utf-8")
        after = apply(change, before)
        check_text(after, shown)
        texts[change.path] = after
        print("".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                           fromfile=f"a/{shown}", tofile=f"b/{shown}")), end="")
    if not args.dry_run:
        for path, text in texts.items():
            write_atomically(path, text)
    counts = {aspect: sum(aspect in c.aspects for c in changes) for aspect in aspects}
    verb = "would change" if args.dry_run else "changed"
    print(f"{len(changes)} files {verb} ({', '.join(f'{aspect} {n}' for aspect, n in counts.items())})")
    return 0
