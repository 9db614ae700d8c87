"""How much a new arXiv entry resembles this repository's papers, and which taxonomy nodes it would go under.

Both models are small and well known, trained at run time on the repository itself in well under a second:
- relevance: TF-IDF (words and word pairs) + logistic regression; positives are the papers' titles and summaries
  and the method and system nodes' texts, negatives are real off-scope arXiv entries (`taxonomy/off_scope.yaml`);
- placement: TF-IDF (words) nearest centroid over the leaf nodes that hold papers, each centroid the mean of its papers
  plus the node's own name, description and keywords.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from tools.models import Paper
from tools.repository import Repository


def paper_text(paper: Paper) -> str:
    return f"{paper.title}. {paper.summary}"


def node_texts(repository: Repository) -> dict[str, str]:
    """Each node's name, description and keywords, with its ancestors' names (placement context)."""
    texts = {}
    for path, placed in repository.nodes.items():
        node = placed.node
        ancestors = [repository.nodes["/".join(path.split("/")[:i])].node.name for i in range(1, path.count("/") + 1)]
        texts[path] = " ".join([*ancestors, node.name, node.description, *node.keywords])
    return texts


def _vectorizer(longest_ngram: int) -> TfidfVectorizer:
    return TfidfVectorizer(ngram_range=(1, longest_ngram), sublinear_tf=True, stop_words="english")


class RelevanceModel:
    """P(in scope | text), from a logistic regression on TF-IDF features."""

    def __init__(self, positives: list[str], negatives: list[str]):
        self.vectorizer = _vectorizer(longest_ngram=2)
        features = self.vectorizer.fit_transform(positives + negatives)
        labels = np.array([1] * len(positives) + [0] * len(negatives))
        self.classifier = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
        self.classifier.fit(features, labels)

    @classmethod
    def for_repository(cls, repository: Repository, leave_out: frozenset[str] = frozenset()) -> RelevanceModel:
        """Trained on the repository; papers whose arXiv id is in `leave_out` are not shown to it (evaluation)."""
        positives = [paper_text(p) for p in repository.papers if p.arxiv not in leave_out]
        positives += [text for path, text in node_texts(repository).items()
                      if repository.nodes[path].kind in ("method", "system")]
        negatives = [f"{e.title}. {e.abstract}" for e in repository.off_scope.entries]
        return cls(positives, negatives)

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self.classifier.predict_proba(self.vectorizer.transform(texts))[:, 1]]


@dataclass(frozen=True)
class NodeScore:
    node: str
    score: float


class NodeSuggester:
    """Nearest centroid over the leaf nodes that hold at least one paper (by primary placement)."""

    def __init__(self, repository: Repository):
        papers = repository.papers
        texts = node_texts(repository)
        self.nodes = sorted({p.taxonomy[0] for p in papers})
        self.vectorizer = _vectorizer(longest_ngram=1)
        matrix = self.vectorizer.fit_transform([paper_text(p) for p in papers] + [texts[n] for n in self.nodes])
        self.paper_vectors = normalize(matrix[: len(papers)])
        node_vectors = normalize(matrix[len(papers):])
        self.labels = np.array([self.nodes.index(p.taxonomy[0]) for p in papers])
        membership = np.zeros((len(self.nodes), len(papers)))
        membership[self.labels, np.arange(len(papers))] = 1.0
        # Sum of each node's paper vectors, plus its own text counted as one more member.
        self.sums = np.asarray(membership @ self.paper_vectors.toarray()) + node_vectors.toarray()

    def _rank(self, vectors: np.ndarray, sums: np.ndarray, k: int) -> list[list[NodeScore]]:
        centroids = normalize(sums)
        similarity = vectors @ centroids.T
        ranked = []
        for row in np.atleast_2d(similarity):
            best = np.argsort(-row)[:k]
            ranked.append([NodeScore(self.nodes[i], round(float(row[i]), 3)) for i in best])
        return ranked

    def suggest(self, texts: list[str], k: int = 3) -> list[list[NodeScore]]:
        if not texts:
            return []
        vectors = normalize(self.vectorizer.transform(texts)).toarray()
        return self._rank(vectors, self.sums, k)

    def leave_one_out(self, k: int = 3) -> tuple[float, float]:
        """Top-1 and top-k accuracy when each paper is placed by centroids that leave it out."""
        dense = self.paper_vectors.toarray()
        hits_1 = hits_k = 0
        for index, vector in enumerate(dense):
            sums = self.sums.copy()
            sums[self.labels[index]] -= vector
            ranked = [self.nodes.index(s.node) for s in self._rank(vector[None, :], sums, k)[0]]
            hits_1 += int(ranked[0] == self.labels[index])
            hits_k += int(self.labels[index] in ranked)
        return hits_1 / len(dense), hits_k / len(dense)
