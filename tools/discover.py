"""`discover`: new arXiv papers for this repository, ranked, placed in the taxonomy and de-duplicated.

    python -m tools discover [--since DATE] [--until DATE] [--from-feed FILE ...] [--json | --checklist]
                             [--write N] [--min-score S]
    python -m tools discover --evaluate

Candidates come from the arXiv API (queries built from the taxonomy nodes' `keywords`) or from saved API
responses (`--from-feed`, for offline use and tests). Each gets a relevance score (0-1) from
`tools.relevance.RelevanceModel`, the three most likely taxonomy nodes, and `duplicate_of` / `declined` when the
repository already has it (same arXiv id, or the same title up to small edits) or a maintainer declined it.
`--write N` drafts the best N new candidates as paper files through the `new` scaffold, each marked for review.
`--evaluate` measures the two models and writes bench-results/discover.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz import fuzz, process

from tools.arxiv_feed import Candidate, query_arxiv, read_feeds
from tools.checks import NEAR_DUPLICATE_SCORE, normalise_title
from tools.errors import SourceError, UsageError, display_path
from tools.relevance import NodeScore, NodeSuggester, RelevanceModel
from tools.repository import Repository, load_repository
from tools.scaffold import make_draft, write_drafts

DEFAULT_DAYS = 8
DEFAULT_LIMIT = 500
DEFAULT_MIN_SCORE = 0.5
LABELLED_FEED = Path("tests") / "fixtures" / "discover" / "feed.xml"
LABELS = Path("tests") / "fixtures" / "discover" / "labels.tsv"
RESULTS = Path("bench-results") / "discover"
TARGETS = {"top1": 0.6, "top3": 0.85, "precision_at_20": 0.8}


@dataclass(frozen=True)
class Ranked:
    """A candidate with what discover concluded about it."""

    candidate: Candidate
    score: float
    nodes: list[NodeScore]
    duplicate_of: str | None
    declined: str | None

    @property
    def is_new(self) -> bool:
        return self.duplicate_of is None and self.declined is None

    def as_json(self) -> dict:
        c = self.candidate
        return {
            "arxiv": c.arxiv, "title": c.title, "authors": list(c.authors), "published": c.published.isoformat(),
            "score": round(self.score, 3), "nodes": [{"node": n.node, "score": n.score} for n in self.nodes],
            "duplicate_of": self.duplicate_of, "declined": self.declined,
            "url": f"https://arxiv.org/abs/{c.arxiv}",
        }


def find_duplicate(candidate: Candidate, by_arxiv: dict[str, str], titles: dict[str, str]) -> str | None:
    """The id of the paper this candidate already is: same arXiv id, or a title within a few edits."""
    if candidate.arxiv in by_arxiv:
        return by_arxiv[candidate.arxiv]
    title = normalise_title(candidate.title)
    if title in titles:
        return titles[title]
    close = process.extractOne(title, titles.keys(), scorer=fuzz.ratio, score_cutoff=NEAR_DUPLICATE_SCORE)
    return titles[close[0]] if close else None


def rank(candidates: list[Candidate], repository: Repository) -> list[Ranked]:
    """Score, place and de-duplicate, best first (ties by newest)."""
    relevance = RelevanceModel.for_repository(repository)
    suggester = NodeSuggester(repository)
    texts = [c.text for c in candidates]
    scores = relevance.score(texts)
    placements = suggester.suggest(texts)
    titles = {normalise_title(p.title): p.id for p in repository.papers}
    by_arxiv = {p.arxiv: p.id for p in repository.papers if p.arxiv}
    reasons = {e.arxiv: e.reason for e in repository.declined.declined if not e.recheck}
    ranked = [Ranked(c, s, n, find_duplicate(c, by_arxiv, titles), reasons.get(c.arxiv))
              for c, s, n in zip(candidates, scores, placements, strict=True)]
    return sorted(ranked, key=lambda r: (-r.score, -r.candidate.published.toordinal(), r.candidate.arxiv))


def _authors(candidate: Candidate) -> str:
    names = list(candidate.authors)
    return ", ".join(names[:3]) + (" et al." if len(names) > 3 else "")


def _nodes(ranked: Ranked) -> str:
    return "; ".join(f"`{n.node}` ({n.score:.2f})" for n in ranked.nodes)


def markdown_report(ranked: list[Ranked], window: str, min_score: float, checklist: bool) -> str:
    proposed = [r for r in ranked if r.is_new and r.score >= min_score]
    known = sum(r.duplicate_of is not None for r in ranked)
    declined = sum(r.declined is not None for r in ranked)
    lines = [f"## Candidate papers, {window}", "",
             f"{len(ranked)} arXiv entries matched the taxonomy's keywords; {len(proposed)} new ones score at least "
             f"{min_score:.2f} (relevance 0-1); {known} are already in the repository and {declined} were "
             "declined before.", ""]
    if not proposed:
        return "\n".join(lines + ["Nothing new to review."]) + "\n"
    if checklist:
        lines.append("Tick a candidate once it has a paper file, or add it to `taxonomy/declined.yaml` with a reason.")
        lines.append("")
        for r in proposed:
            c = r.candidate
            lines.append(f"- [ ] **{r.score:.2f}** [{c.title}](https://arxiv.org/abs/{c.arxiv}) — {_authors(c)} · "
                         f"{c.published} · {_nodes(r)}")
    else:
        lines += ["| # | score | title | authors | date | suggested nodes | links |",
                  "|---|---|---|---|---|---|---|"]
        for index, r in enumerate(proposed, start=1):
            c = r.candidate
            title = c.title.replace("|", "\\|")
            lines.append(f"| {index} | {r.score:.2f} | {title} | {_authors(c)} | {c.published} | {_nodes(r)} | "
                         f"[abs](https://arxiv.org/abs/{c.arxiv}) · [pdf](https://arxiv.org/pdf/{c.arxiv}) |")
    return "\n".join(lines) + "\n"


def draft_candidates(ranked: list[Ranked], count: int, repository: Repository) -> list[Path]:
    """Paper files for the best `count` new candidates, through the `new` scaffold; all or nothing."""
    root = repository.root
    taken = {path.stem for path in (root / "papers").glob("*.yaml")}
    drafts = []
    for r in [r for r in ranked if r.is_new][:count]:
        c = r.candidate
        record = {
            "title": c.title, "authors": list(c.authors), "year": c.published.year, "venue": "arXiv",
            "venue_type": "preprint", "arxiv": c.arxiv, "verified_from": [f"https://arxiv.org/abs/{c.arxiv}"],
            "announced": c.published,
            "notes": f"Proposed by discover (relevance {r.score:.2f}; nodes {', '.join(n.node for n in r.nodes)}). "
                     "Check every field against the arXiv page and write the summary before merging.",
        }
        draft = make_draft(record, f"arXiv {c.arxiv} (discover)", repository.nodes[r.nodes[0].node], taken, root)
        taken.add(draft.id)
        drafts.append(draft)
    return write_drafts(root, drafts)


def evaluate(repository: Repository, feed: Path, labels: Path) -> dict:
    """Leave-one-out placement accuracy over the repository; precision@20 and recall of relevance on a feed."""
    truth = read_labels(labels)
    candidates = [c for c in read_feeds([feed]) if c.arxiv in truth]
    started = time.perf_counter()
    suggester = NodeSuggester(repository)
    # Papers of the labelled feed that the repository holds are hidden from the ranker, as if they were new.
    relevance = RelevanceModel.for_repository(repository, leave_out=frozenset(c.arxiv for c in candidates))
    train_s = time.perf_counter() - started
    top1, top3 = suggester.leave_one_out(k=3)
    scores = relevance.score([c.text for c in candidates])
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    relevant = {c.arxiv for c in candidates if truth[c.arxiv]}
    top20 = [candidates[i].arxiv for i in order[:20]]
    found = {candidates[i].arxiv for i in order if scores[i] >= DEFAULT_MIN_SCORE}
    figures = {
        "papers": len(repository.papers), "nodes_with_papers": len(suggester.nodes),
        "top1": round(top1, 3), "top3": round(top3, 3),
        "feed_entries": len(candidates), "feed_in_scope": len(relevant),
        "feed_in_repository": sum(c.arxiv in {p.arxiv for p in repository.papers} for c in candidates),
        "precision_at_20": round(sum(a in relevant for a in top20) / min(20, len(top20)), 3),
        "recall_at_threshold": round(len(found & relevant) / len(relevant), 3) if relevant else None,
        "precision_at_threshold": round(len(found & relevant) / len(found), 3) if found else None,
        "threshold": DEFAULT_MIN_SCORE, "train_s": round(train_s, 3),
    }
    figures["targets"] = {name: {"target": bar, "value": figures[name], "met": bool(figures[name] >= bar)}
                          for name, bar in TARGETS.items()}
    figures["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    figures["date"] = dt.date.today().isoformat()
    return figures


def read_labels(path: Path) -> dict[str, bool]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read labels {path}: {exc.strerror or exc}") from None
    labels = {}
    for number, line in enumerate(lines, start=1):
        cells = line.split("\t")
        if len(cells) < 2 or cells[1] not in ("in", "out"):
            raise UsageError(f"{path}:{number}: expected 'ARXIV_ID<TAB>in|out<TAB>reason'")
        labels[cells[0]] = cells[1] == "in"
    return labels


def write_evaluation(figures: dict, root: Path) -> tuple[Path, Path]:
    out = root / RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    rows = [f"| {name} | {t['value']} | ≥ {t['target']} | {'met' if t['met'] else 'missed'} |"
            for name, t in figures["targets"].items()]
    md_path.write_text("\n".join([
        "<!-- Generated by `python -m tools discover --evaluate`; do not edit. -->",
        f"# discover: measured quality ({figures['date']})", "",
        f"Placement: leave-one-out nearest centroid over {figures['papers']} papers and "
        f"{figures['nodes_with_papers']} leaf nodes. Relevance: {figures['feed_entries']} labelled arXiv entries "
        f"({figures['feed_in_scope']} in scope), threshold {figures['threshold']}: recall "
        f"{figures['recall_at_threshold']}, precision {figures['precision_at_threshold']}. "
        f"Both models trained in {figures['train_s']} s.", "",
        "| measure | value | target | verdict |", "|---|---|---|---|", *rows, ""]), encoding="utf-8")
    return json_path, md_path


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date like 2026-12-01") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "discover",
        help="find new arXiv papers for the repository, ranked and placed in the taxonomy",
        description="Query arXiv (or read saved API responses) for papers announced in a window, score how much "
                    "each resembles the repository's papers, suggest three taxonomy nodes, and drop those already "
                    "in papers/ or in taxonomy/declined.yaml. Exit 2 when arXiv or a feed file cannot be read.",
    )
    parser.add_argument("--since", type=parse_date, metavar="DATE",
                        help=f"first day of the window (default: {DEFAULT_DAYS} days before --until)")
    parser.add_argument("--until", type=parse_date, metavar="DATE", help="last day of the window (default: today)")
    parser.add_argument("--from-feed", type=Path, action="append", metavar="FILE", default=[],
                        help="read this saved arXiv API response instead of querying arXiv (repeatable)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="most entries to fetch from arXiv")
    parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE,
                        help="lowest relevance a candidate needs to appear in the report")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print every candidate as JSON, best first")
    output.add_argument("--checklist", action="store_true", help="print the report as a task list (for an issue)")
    output.add_argument("--evaluate", action="store_true",
                        help="measure placement and relevance and write bench-results/discover.{json,md}")
    parser.add_argument("--write", type=int, metavar="N", default=0,
                        help="draft the best N new candidates as paper files, marked for review")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    repository = load_repository(args.root)
    if args.evaluate:
        figures = evaluate(repository, args.root / LABELLED_FEED, args.root / LABELS)
        paths = write_evaluation(figures, args.root)
        print(paths[1].read_text(encoding="utf-8"), end="")
        return 0
    until = args.until or dt.date.today()
    since = args.since or until - dt.timedelta(days=DEFAULT_DAYS)
    if since > until:
        raise UsageError(f"--since {since} is after --until {until}; give the earlier date first")
    if args.from_feed:
        candidates = [c for c in read_feeds(args.from_feed)
                      if args.since is None and args.until is None or since <= c.published <= until]
        window = f"from {', '.join(p.name for p in args.from_feed)}"
    else:
        phrases = sorted({k for placed in repository.nodes.values() for k in placed.node.keywords})
        candidates = query_arxiv(phrases, since, until, args.limit)
        window = f"{since} to {until}"
        if not candidates:
            raise SourceError(f"the arXiv API returned no entries for {window}; arXiv sometimes answers an empty "
                              "page, so try again in a few minutes")
    ranked = rank(candidates, repository)
    if args.json:
        print(json.dumps([r.as_json() for r in ranked], indent=2))
    else:
        print(markdown_report(ranked, window, args.min_score, args.checklist), end="")
    if args.write:
        for path in draft_candidates(ranked, args.write, repository):
            print(f"wrote {display_path(path, args.root)} (review it: summary and every field)")
    return 0
