"""What the paper and node pages show beyond a paper's own fields: who is placed under a node, related papers,
links and labels."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable

from tools.errors import SiteError
from tools.models import Paper
from tools.repository import Repository

RELATED_SIZE = 5
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or that the this to via with without we our "
    "using based towards toward through large vision language model models lvlm lvlms vlm vlms mllm mllms "
    "multimodal visual".split()
)
WORD = re.compile(r"[a-z][a-z0-9]+(?:-[a-z0-9]+)*")


def papers_under(repo: Repository) -> dict[str, list[Paper]]:
    """For every node, the papers placed at it or anywhere below it (each paper once)."""
    under: dict[str, list[Paper]] = {path: [] for path in repo.nodes}
    for paper in repo.papers:
        reached: set[str] = set()
        for placement in paper.taxonomy:
            parts = placement.split("/")
            reached.update("/".join(parts[: depth + 1]) for depth in range(len(parts)))
        for path in reached:
            if path in under:
                under[path].append(paper)
    for papers in under.values():
        papers.sort(key=lambda p: (-p.year, p.display_name.lower()))
    return under


def words_of(paper: Paper) -> set[str]:
    text = f"{paper.name or ''} {paper.title} {paper.summary}".lower()
    return {word for word in WORD.findall(text) if word not in STOPWORDS and len(word) > 2}


def similarity_index(papers: list[Paper]) -> Callable[[Paper], list[tuple[float, Paper]]]:
    """Papers ranked by shared informative words of title and summary (idf-weighted overlap)."""
    words = {paper.id: words_of(paper) for paper in papers}
    document_frequency = Counter(word for bag in words.values() for word in bag)
    count = max(len(papers), 1)
    common = max(3, count // 5)
    idf = {word: math.log(count / df) for word, df in document_frequency.items() if 1 < df <= common}
    postings: dict[str, list[str]] = defaultdict(list)
    for paper_id, bag in words.items():
        for word in bag:
            if word in idf:
                postings[word].append(paper_id)
    by_id = {paper.id: paper for paper in papers}
    norm = {pid: math.sqrt(sum(idf.get(w, 0.0) ** 2 for w in bag)) or 1.0 for pid, bag in words.items()}

    def ranked(paper: Paper) -> list[tuple[float, Paper]]:
        scores: dict[str, float] = defaultdict(float)
        for word in words[paper.id]:
            weight = idf.get(word)
            if weight is None:
                continue
            for other in postings[word]:
                if other != paper.id:
                    scores[other] += weight * weight
        ordered = sorted(scores.items(), key=lambda item: (-item[1] / norm[item[0]], item[0]))
        return [(score / (norm[pid] * norm[paper.id]), by_id[pid]) for pid, score in ordered]

    return ranked


def related_papers(repo: Repository,
                   under: dict[str, list[Paper]]) -> dict[str, tuple[list[Paper], list[Paper]]]:
    """For each paper: up to RELATED_SIZE papers of the same primary node (the most similar first), and up to
    RELATED_SIZE similarly worded papers from elsewhere; the page shows the two lists under their own names."""
    ranked = similarity_index(repo.papers)
    related: dict[str, tuple[list[Paper], list[Paper]]] = {}
    for paper in repo.papers:
        order = ranked(paper)
        rank = {other.id: position for position, (_, other) in enumerate(order)}
        siblings = [other for other in under.get(paper.taxonomy[0], []) if other.id != paper.id]
        siblings.sort(key=lambda other: (rank.get(other.id, len(rank)), -other.year, other.id))
        chosen = siblings[:RELATED_SIZE]
        taken = {other.id for other in chosen} | {paper.id}
        similar = [other for score, other in order if other.id not in taken and score > 0.05][:RELATED_SIZE]
        related[paper.id] = (chosen, similar)
    return related


def authors_text(paper: Paper) -> str:
    text = ", ".join(paper.authors)
    return f"{text} et al." if paper.authors_truncated else text


def paper_links(paper: Paper) -> list[tuple[str, str]]:
    """(label, URL) of every web address of a paper; only http(s) addresses are ever emitted."""
    links = []
    if paper.url:
        links.append(("Paper", str(paper.url)))
    if paper.arxiv:
        links.append((f"arXiv {paper.arxiv}", f"https://arxiv.org/abs/{paper.arxiv}"))
    if paper.doi:
        links.append(("DOI", f"https://doi.org/{paper.doi}"))
    if paper.code:
        links.append(("Code", str(paper.code)))
    if paper.project_page:
        links.append(("Project page", str(paper.project_page)))
    return [(label, checked_url(url)) for label, url in links]


def checked_url(url: str) -> str:
    """A second line of defence behind the models' validation: only http(s) URLs reach an href."""
    if not re.match(r"^https?://", url, re.IGNORECASE):
        raise SiteError(f"refusing to link to '{url[:60]}': only http:// and https:// addresses are allowed")
    return url


def placement_label(repo: Repository, path: str) -> str:
    """'Keyframe selection › Training-free': a leaf with its parent, since leaf names repeat across the tree."""
    node = repo.nodes[path]
    return f"{repo.nodes[node.parent].node.name} › {node.node.name}" if node.depth >= 2 else node.node.name


def node_label(repo: Repository, path: str) -> str:
    node = repo.nodes[path]
    stage = repo.nodes[node.stage].node.name.split()[0]
    return node.node.name if node.depth == 0 else f"{stage}: {node.node.name}"
