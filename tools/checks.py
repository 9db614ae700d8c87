"""Rules that need more than one value or more than one file: ids, duplicates, taxonomy placement, facets.

`check_papers` returns (errors, warnings). Errors fail validation; warnings (titles that are close but not
identical) are printed for a human to judge.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable

from rapidfuzz import fuzz

from tools.errors import Problem
from tools.loading import LoadedPaper, line_of
from tools.models import SURVEY_SOURCES, DeclinedList, PlacedNode, VenueType, Vocabulary

NEAR_DUPLICATE_SCORE = 95.0  # rapidfuzz ratio (0-100) of normalised titles from which two papers are flagged
NON_WORD = re.compile(r"[\W_]+")


def check_papers(loaded: list[LoadedPaper], nodes: dict[str, PlacedNode],
                 vocabulary: Vocabulary) -> tuple[list[Problem], list[Problem]]:
    errors: list[Problem] = []
    spellings = {field: vocabulary.spellings(field) for field in VOCABULARY_FIELDS}
    for record in loaded:
        errors += check_file_name(record)
        errors += check_findable(record)
        errors += check_provenance(record)
        errors += check_dates(record)
        errors += check_name(record)
        errors += check_placement(record, nodes)
        errors += check_vocabulary(record, spellings)
    errors += check_unique(loaded, "id", lambda p: p.id)
    errors += check_reported_by(loaded)
    errors += check_unique(loaded, "arxiv", lambda p: p.arxiv)
    errors += check_unique(loaded, "doi", lambda p: p.doi.lower() if p.doi else None)
    same_titles, close_titles = check_titles(loaded)
    return errors + same_titles, close_titles


def _problem(record: LoadedPaper, loc: tuple[str | int, ...], message: str) -> Problem:
    return Problem(record.shown, line_of(record.text, loc), ".".join(map(str, loc)), message)


def check_file_name(record: LoadedPaper) -> list[Problem]:
    stem = record.path.stem
    if record.paper.id == stem:
        return []
    return [_problem(record, ("id",), f"'{record.paper.id}' does not match the file name '{stem}.yaml'; "
                                      f"rename the file to '{record.paper.id}.yaml' or set id: {stem}")]


def check_findable(record: LoadedPaper) -> list[Problem]:
    paper = record.paper
    if paper.venue_type == VenueType.preprint.value and not (paper.arxiv or paper.doi or paper.url):
        return [_problem(record, ("venue_type",), "a preprint needs an 'arxiv' id, a 'doi' or a 'url' so readers "
                                                  "can find it")]
    return []


PROVENANCE_SINCE = dt.date(2026, 12, 6)  # entries added from this day on record the pages they were checked against


def check_provenance(record: LoadedPaper) -> list[Problem]:
    """An entry the survey does not mention must say which public page its metadata was read on."""
    paper = record.paper
    if paper.verified_from or paper.added < PROVENANCE_SINCE or SURVEY_SOURCES.intersection(paper.sources):
        return []
    return [_problem(record, ("sources",), "an entry the survey does not mention needs 'verified_from': the "
                                           "public page(s) its title, authors and ids were read on, e.g. "
                                           "https://arxiv.org/abs/<id>")]


def check_dates(record: LoadedPaper) -> list[Problem]:
    paper = record.paper
    if paper.announced and paper.announced > paper.added:
        return [_problem(record, ("announced",), f"{paper.announced} is after added ({paper.added}); a work is "
                                                 "announced before it enters the repository: check both dates")]
    return []


def check_name(record: LoadedPaper) -> list[Problem]:
    """A short name that repeats the title's own prefix in another case ('Dynamic-LLaVa' for a title starting
    'Dynamic-LLaVA:') is printed twice by every list; it must be spelt as the title spells it."""
    paper = record.paper
    if not paper.name:
        return []
    prefix, after = paper.title[: len(paper.name)], paper.title[len(paper.name): len(paper.name) + 1]
    if prefix != paper.name and prefix.casefold() == paper.name.casefold() and after in ("", ":"):
        return [_problem(record, ("name",), f"'{paper.name}' is the title's own '{prefix}' in another case; "
                                            f"write name: {prefix}")]
    return []


VOCABULARY_FIELDS = ("models", "benchmarks")


def check_vocabulary(record: LoadedPaper, spellings: dict[str, dict[str, str]]) -> list[Problem]:
    """Each model and benchmark, in the lists and in the reported results, is written in its one canonical
    spelling from taxonomy/vocabulary.yaml."""
    named: list[tuple[str, tuple[str | int, ...], str]] = [
        (field, (field, index), name)
        for field in VOCABULARY_FIELDS for index, name in enumerate(getattr(record.paper, field))]
    for row, result in enumerate(record.paper.results):
        named.append(("models", ("results", row, "model"), result.model))
        named += [("benchmarks", ("results", row, "scores", index, "benchmark"), score.benchmark)
                  for index, score in enumerate(result.scores)]
    problems = []
    for field, loc, name in named:
        known = spellings[field]
        canonical = known.get(name.casefold())
        if canonical == name:
            continue
        if canonical:
            message = f"'{name}' is written '{canonical}' here; use that spelling"
        else:
            close = difflib.get_close_matches(name, sorted(set(known.values())), n=1, cutoff=0.8)
            hint = f"did you mean '{close[0]}'? If not, " if close else ""
            message = (f"'{name}' is not in taxonomy/vocabulary.yaml; {hint}add it there under "
                       f"{field} (with its aliases)")
        problems.append(_problem(record, loc, message))
    return problems


def check_reported_by(loaded: list[LoadedPaper]) -> list[Problem]:
    """A result reprinted from another paper's table names that paper by the id of its file."""
    ids = {record.paper.id for record in loaded}
    problems = []
    for record in loaded:
        for row, result in enumerate(record.paper.results):
            if result.reported_by is None:
                continue
            if result.reported_by == record.paper.id:
                message = "names the paper itself; leave 'reported_by' out for the paper's own table"
            elif result.reported_by not in ids:
                close = difflib.get_close_matches(result.reported_by, sorted(ids), n=1, cutoff=0.8)
                hint = f"did you mean '{close[0]}'?" if close else "add that paper first, or leave the row out"
                message = f"'{result.reported_by}' is not the id of a paper file; {hint}"
            else:
                continue
            problems.append(_problem(record, ("results", row, "reported_by"), message))
    return problems


def suggest_node(path: str, nodes: Iterable[str]) -> str:
    """'did you mean ...?' for a mistyped node path, or where to look when nothing is close."""
    nodes = list(nodes)
    tail = path.rsplit("/", 1)[-1]
    candidates = (
        [n for n in nodes if n.endswith("/" + tail)]  # the right leaf under the wrong parent, or the bare leaf
        or sorted((n for n in nodes if n.startswith(path)), key=len)  # a prefix of a node path
        or difflib.get_close_matches(path, nodes, n=1, cutoff=0.6)  # a typo
    )
    if candidates:
        return f"did you mean '{candidates[0]}'?"
    return "the node paths are listed in taxonomy/taxonomy.yaml (e.g. 'prefilling/token-compression')"


def check_placement(record: LoadedPaper, nodes: dict[str, PlacedNode]) -> list[Problem]:
    paper = record.paper
    problems = []
    placed = []
    for index, path in enumerate(paper.taxonomy):
        if path in nodes:
            placed.append(nodes[path])
        else:
            message = f"'{path}' is not a node; {suggest_node(path, nodes)}"
            problems.append(_problem(record, ("taxonomy", index), message))
    if problems:
        return problems  # facets cannot be judged against a node that does not exist
    primary = placed[0]
    if primary.node.children:
        leaves = ", ".join(f"{primary.path}/{child.id}" for child in primary.node.children)
        problems.append(_problem(record, ("taxonomy", 0), f"'{primary.path}' has sub-nodes; place the paper at "
                                                          f"the one that fits: {leaves}"))
    allowed: dict[str, set[str]] = defaultdict(set)
    for node in placed:
        for facet, values in node.facets.items():
            allowed[facet].update(values)
    where = f"'{placed[0].path}'" if len(placed) == 1 else "its nodes"
    for facet, value in paper.attributes.items():
        if facet not in allowed:
            offered = ", ".join(sorted(allowed)) or "none"
            problems.append(_problem(record, ("attributes", facet),
                                     f"facet '{facet}' is not used at {where}; facets there: {offered}"))
        elif value not in allowed[facet]:
            problems.append(_problem(record, ("attributes", facet),
                                     f"'{value}' is not allowed at {where}; choose one of: "
                                     f"{', '.join(sorted(allowed[facet]))}"))
    return problems


def check_declined(loaded: list[LoadedPaper], declined: DeclinedList) -> list[Problem]:
    """A declined arXiv id has no paper file: the two decisions contradict each other."""
    ids = declined.ids()
    return [_problem(record, ("arxiv",), f"'{record.paper.arxiv}' is also in taxonomy/declined.yaml; keep the "
                                        "paper and delete the declined entry, or the other way round")
            for record in loaded if record.paper.arxiv in ids]


def check_unique(loaded: list[LoadedPaper], field: str, key: Callable) -> list[Problem]:
    first: dict[str, LoadedPaper] = {}
    problems = []
    for record in loaded:
        value = key(record.paper)
        if value is None:
            continue
        if value in first:
            problems.append(_problem(record, (field,), f"'{value}' is already used by {first[value].shown}; "
                                                       "one work, one file: merge the two entries"))
        else:
            first[value] = record
    return problems


def normalise_title(title: str) -> str:
    """Lower case, accents folded, punctuation dropped: 'Token-Merging: Fast!' -> 'token merging fast'."""
    folded = title.casefold()
    if not folded.isascii():
        folded = "".join(ch for ch in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(ch))
    return NON_WORD.sub(" ", folded).strip()


def check_titles(loaded: list[LoadedPaper]) -> tuple[list[Problem], list[Problem]]:
    """Identical titles after normalisation are errors; close ones (a preprint and its published version with a
    word changed) are warnings. Close titles are compared within blocks sharing their first or last three words,
    which keeps the work linear in practice; two edits at both ends of a title go unnoticed."""
    same: list[Problem] = []
    close: list[Problem] = []
    by_title: dict[str, LoadedPaper] = {}
    blocks: dict[tuple[str, str], list[tuple[str, LoadedPaper]]] = defaultdict(list)
    for record in loaded:
        title = normalise_title(record.paper.title)
        if title in by_title:
            other = by_title[title]
            same.append(_problem(record, ("title",), f"same title as {other.shown} ('{other.paper.id}'); "
                                                     "one work, one file: merge the two entries"))
            continue
        by_title[title] = record
        words = title.split()
        blocks["head", " ".join(words[:3])].append((title, record))
        blocks["tail", " ".join(words[-3:])].append((title, record))
    reported: set[tuple[str, str]] = set()
    for members in blocks.values():
        for i, (title, record) in enumerate(members):
            for other_title, other in members[:i]:
                pair = (other.paper.id, record.paper.id)
                if pair in reported:
                    continue
                score = fuzz.ratio(title, other_title, score_cutoff=NEAR_DUPLICATE_SCORE)
                if score:
                    reported.add(pair)
                    close.append(_problem(record, ("title",), f"nearly the same title as {other.shown} "
                                                              f"({score:.0f}% similar); if they are one work, "
                                                              "merge the two entries"))
    return same, close
