"""Pydantic models for the taxonomy (`taxonomy/taxonomy.yaml`) and for one paper (`papers/<id>.yaml`).

The models check what a single value can show on its own; rules that relate fields or files (unique ids, taxonomy
paths that exist, facet values a node allows, a preprint that readers can find, near-duplicate titles) live
in `tools.checks`.
The JSON Schema in `taxonomy/paper.schema.json` is generated from `Paper` (`python -m tools schema`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    PositiveInt,
    StringConstraints,
    field_validator,
    model_validator,
)

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
NEW_ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}$")
ARXIV_PATTERN = r"^(?:\d{4}\.\d{4,5}|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})$"
DOI_PATTERN = r"^10\.\d{4,9}/\S+$"
NODE_PATH_PATTERN = r"^[a-z0-9-]+(?:/[a-z0-9-]+)*$"
FIRST_YEAR = 1990


PLACEHOLDER = "TODO:"  # what `python -m tools new` writes where the source cannot give a value
# A tag starts right after '<' ('<b>', '</i>', '<!--'); '< b' is ordinary text in every browser, so
# "keeps a < b and c > d" is allowed. Output is escaped all the same.
UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|</?[a-zA-Z!][^>]*>")


def _plain_text(text: str) -> str:
    """Reject placeholders, HTML tags and control characters (cheap: this runs for every string of every paper)."""
    if text.isprintable() and "<" not in text and not text.startswith(PLACEHOLDER):
        return text  # the common case, decided without a regex
    if text.startswith(PLACEHOLDER):
        raise ValueError(f"is still a placeholder; {text[len(PLACEHOLDER):].strip()}")
    found = UNSAFE_TEXT.search(text)
    if found:
        if found.group().startswith("<"):
            raise ValueError(f"must be plain text: remove the HTML tag '{found.group()[:40]}'")
        raise ValueError(f"contains the control character {found.group()!r}; retype the text")
    return text


def _web_url(url: HttpUrl) -> HttpUrl:
    if url.host is None or "." not in url.host and url.host != "localhost":
        raise ValueError(f"'{url}' has no proper host name; give a full address like https://github.com/org/repo")
    return url


def plain_text(min_length: int = 1, max_length: int | None = None) -> Any:
    """A stripped, non-empty string without markup or control characters, with optional length bounds.

    The bounds must sit inside the `Annotated` type: pydantic ignores `Field(max_length=...)` on a type that
    carries its own validators.
    """
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        AfterValidator(_plain_text),
    ]


PlainText = plain_text()
WebUrl = Annotated[HttpUrl, AfterValidator(_web_url)]
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, max_length=80)]
NodePath = Annotated[str, StringConstraints(pattern=NODE_PATH_PATTERN)]


class Kind(str, Enum):
    method = "method"
    benchmark = "benchmark"
    model = "model"
    system = "system"
    survey = "survey"


class VenueType(str, Enum):
    conference = "conference"
    journal = "journal"
    workshop = "workshop"
    preprint = "preprint"


class Source(str, Enum):
    """Where the survey (or its authors' paper list) mentions a work."""

    figure_3 = "figure-3"
    table_2 = "table-2"
    table_3 = "table-3"
    table_4 = "table-4"
    table_6 = "table-6"
    appendix_b3 = "appendix-b3"
    appendix_c = "appendix-c"
    appendix_f = "appendix-f"
    repo_list = "repo-list"
    bibliography = "bibliography"
    peer_list = "peer-list"  # another public paper list of the field carries it (see `python -m tools coverage`)
    community = "community"  # added by a contributor, not mentioned by the survey


SURVEY_SOURCES = frozenset(source.value for source in Source) - {Source.peer_list.value, Source.community.value}


class Metric(str, Enum):
    """What a reported number measures; the range each may take is in `METRIC_RANGES`."""

    accuracy = "accuracy"  # percent (accuracy, F1), 0-100, higher is better
    score = "score"  # a benchmark's own points, e.g. MME's perception total
    cider = "cider"  # CIDEr, for captioning
    speedup = "speedup"  # times faster than plain decoding or the uncompressed model (x)
    accepted_length = "accepted-length"  # tokens accepted per verification step (tau), speculative decoding


# Inclusive bounds of a plausible value; a quality metric also needs the uncompressed baseline of the same table.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    Metric.accuracy.value: (0.0, 100.0),
    Metric.score.value: (0.0, 10_000.0),
    Metric.cider.value: (0.0, 300.0),
    Metric.speedup.value: (0.01, 100.0),
    Metric.accepted_length.value: (1.0, 100.0),
}
QUALITY_METRICS = frozenset({Metric.accuracy.value, Metric.score.value, Metric.cider.value})
Percent = Annotated[float, Field(gt=0, le=100)]
Positive = Annotated[float, Field(gt=0)]


class Score(BaseModel):
    """One benchmark number of a reported result, with the uncompressed model's number from the same table."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)

    benchmark: PlainText = Field(description="Canonical benchmark name from taxonomy/vocabulary.yaml, e.g. 'GQA'.")
    metric: Metric = Field(
        default=Metric.accuracy, validate_default=True,
        description="accuracy (0-100, the default), score (MME-style points), cider, speedup (x) or accepted-length.")
    value: float = Field(description="The number exactly as the source table prints it (without '%').")
    baseline: float | None = Field(
        default=None,
        description="The reference's number in the same table: the uncompressed model (all visual tokens, full "
                    "16-bit KV), or for frame selection uniform sampling of as many frames; required for accuracy, "
                    "score and cider, absent for speedup and accepted-length.",
    )

    @model_validator(mode="after")
    def in_range_with_baseline(self) -> Score:
        low, high = METRIC_RANGES[self.metric]
        for name in ("value", "baseline"):
            number = getattr(self, name)
            if number is not None and not low <= number <= high:
                raise ValueError(f"{name} {number:g} is outside {low:g}-{high:g}, the range of metric "
                                 f"'{self.metric}'; copy the number as the table prints it, or set the metric")
        if self.metric in QUALITY_METRICS and self.baseline is None:
            raise ValueError(f"{self.benchmark}: 'baseline' is missing: add the uncompressed model's {self.metric} "
                             "from the same table, or leave the row out if the table has none")
        if self.metric not in QUALITY_METRICS and self.baseline is not None:
            raise ValueError(f"{self.benchmark}: a {self.metric} is measured against plain decoding; remove "
                             "'baseline'")
        return self


class Setting(BaseModel):
    """What makes reported results comparable across papers: the budget they were measured at, as printed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    visual_tokens: PositiveInt | None = Field(default=None, description="Visual tokens kept per image.")
    kept_percent: Percent | None = Field(default=None, description="Share of visual tokens kept, in percent.")
    frames: PositiveInt | None = Field(default=None, description="Frames sampled per video.")
    kv_budget_tokens: PositiveInt | None = Field(default=None, description="KV-cache entries kept per layer.")
    kv_budget_percent: Percent | None = Field(default=None, description="Share of the KV cache kept, in percent.")
    kv_bits: PositiveInt | None = Field(default=None, description="Bits per KV-cache value after quantization.")
    draft_model: PlainText | None = Field(default=None, description="Draft model of speculative decoding.")
    draft_length: PositiveInt | None = Field(default=None, description="Tokens drafted per step (gamma).")
    temperature: Annotated[float, Field(ge=0)] | None = Field(default=None, description="Sampling temperature.")

    @model_validator(mode="after")
    def says_something(self) -> Setting:
        if not self.model_dump(exclude_none=True):
            raise ValueError("give at least one of " + ", ".join(type(self).model_fields)
                             + ", as the source table states it")
        return self

    @property
    def label(self) -> str:
        """'64 visual tokens, 32 frames', 'KV budget 10 %', 'draft: X, γ = 5, T = 0': the comparable setting."""
        parts = []
        if self.visual_tokens is not None:
            parts.append(f"{self.visual_tokens} visual tokens")
        if self.kept_percent is not None:
            parts.append(f"{self.kept_percent:g} % of visual tokens")
        if self.frames is not None:
            parts.append(f"{self.frames} frames")
        if self.kv_budget_tokens is not None:
            parts.append(f"KV budget {self.kv_budget_tokens} tokens")
        if self.kv_budget_percent is not None:
            parts.append(f"KV budget {self.kv_budget_percent:g} %")
        if self.kv_bits is not None:
            parts.append(f"{self.kv_bits}-bit KV")
        if self.draft_model is not None:
            parts.append(f"draft {self.draft_model}")
        if self.draft_length is not None:
            parts.append(f"γ = {self.draft_length}")
        if self.temperature is not None:
            parts.append(f"T = {self.temperature:g}")
        return ", ".join(parts)


class Efficiency(BaseModel):
    """Efficiency figures printed in the same table as a result, in these units only (never converted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flops_t: Positive | None = Field(default=None, description="Compute per sample in TFLOPs.")
    prefill_ms: Positive | None = Field(default=None, description="Prefill time (time to first token) in ms.")
    latency_ms: Positive | None = Field(default=None, description="End-to-end latency per sample in ms.")
    memory_gb: Positive | None = Field(default=None, description="Memory (GPU or KV cache) in GB.")
    speedup: Positive | None = Field(default=None, description="Speed-up over the uncompressed model (x).")
    hardware: PlainText | None = Field(default=None, description="Where it was measured, e.g. 'A100'.")


class ResultSource(BaseModel):
    """Where a reported result was read: the page and the table in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: WebUrl = Field(description="The page holding the table: arXiv HTML page, or the code README at a commit.")
    table: plain_text(max_length=200) = Field(
        description="Which table: 'Table 1', or where a README prints it (\"README table 'Main results'\").")


class Result(BaseModel):
    """One row of a paper's reported results: one method, one model, one setting, from one table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: PlainText = Field(description="Canonical model name from taxonomy/vocabulary.yaml.")
    setting: Setting
    scores: list[Score] = Field(min_length=1, description="The row's numbers, one per benchmark and metric.")
    efficiency: Efficiency | None = None
    source: ResultSource
    reported_by: Slug | None = Field(
        default=None,
        description="Id of the paper whose table printed this row, when it is not this paper's own table.",
    )
    note: plain_text(max_length=500) | None = Field(
        default=None,
        description="How the row was read, when the table needs it: what it calls the setting, columns left out.",
    )

    @field_validator("scores")
    @classmethod
    def each_benchmark_once(cls, scores: list[Score]) -> list[Score]:
        seen: set[tuple[str, str]] = set()
        for score in scores:
            key = (score.benchmark, score.metric)
            if key in seen:
                raise ValueError(f"{score.benchmark} ({score.metric}) is given twice in one row; a row is one "
                                 "setting of one table, so split it into two rows")
            seen.add(key)
        return scores

    def retention(self) -> float | None:
        """Mean of value / baseline over the row's quality scores, in percent; None when it has none."""
        ratios = [score.value / score.baseline for score in self.scores
                  if score.metric in QUALITY_METRICS and score.baseline]
        return 100 * sum(ratios) / len(ratios) if ratios else None


class Paper(BaseModel):
    """One work in the repository: `papers/<id>.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)

    id: Slug = Field(description="Stable lowercase slug, equal to the file name without .yaml, e.g. 'fastv-2024'.")
    name: plain_text(max_length=60) | None = Field(
        default=None,
        description="Short method, model or benchmark name as the survey writes it, e.g. 'FastV'.",
    )
    title: plain_text(max_length=300) = Field(description="Full title as published.")
    authors: list[PlainText] = Field(
        min_length=1, description="Authors in order, each as 'Given Family', e.g. 'Liang Chen'."
    )
    authors_truncated: bool = Field(
        default=False, description="True when the source lists only the first authors ('and N others')."
    )
    year: int = Field(description="Year of the version cited (publication year, or preprint year).")
    venue: plain_text(max_length=80) = Field(description="Short venue name, e.g. 'CVPR', 'NeurIPS', 'arXiv'.")
    venue_type: VenueType = Field(description="conference, journal, workshop or preprint.")
    arxiv: Annotated[str, StringConstraints(pattern=ARXIV_PATTERN)] | None = Field(
        default=None, description="Bare arXiv identifier without version, e.g. '2403.06764'."
    )
    doi: Annotated[str, StringConstraints(pattern=DOI_PATTERN)] | None = Field(
        default=None, description="DOI without the resolver prefix, e.g. '10.1109/ICCV51070.2023.00532'."
    )
    url: WebUrl | None = Field(
        default=None, description="Canonical page of the paper (proceedings, OpenReview, arXiv)."
    )
    code: WebUrl | None = Field(default=None, description="Source code repository, if public.")
    project_page: WebUrl | None = Field(default=None, description="Project or demo page, if any.")
    kind: Kind = Field(description="method, benchmark, model, system or survey.")
    taxonomy: list[NodePath] = Field(
        min_length=1,
        description="Taxonomy node paths from taxonomy/taxonomy.yaml; the first is the primary placement.",
    )
    attributes: dict[str, str] = Field(
        default_factory=dict,
        description="Facet values, e.g. {modality: video, training: free}; the node decides which facets apply.",
    )
    models: list[PlainText] = Field(default_factory=list, description="Models evaluated, e.g. 'LLaVA-1.5-7B'.")
    benchmarks: list[PlainText] = Field(default_factory=list, description="Benchmarks evaluated on.")
    summary: plain_text(min_length=20, max_length=600) = Field(
        description="One sentence in our own words on what the work does."
    )
    sources: list[Source] = Field(
        min_length=1, description="Where the survey mentions the work: figure-3, table-2, repo-list, ..."
    )
    verified_from: list[WebUrl] = Field(
        default_factory=list,
        description="Public pages the metadata was read on (arXiv abstract, venue page, code README), so a reviewer "
                    "can re-check it. Required for entries the survey does not mention.",
    )
    announced: dt.date | None = Field(
        default=None, description="Date the work was first announced (arXiv v1 submission date), if known."
    )
    added: dt.date = Field(description="Date the entry entered this repository (YYYY-MM-DD).")
    results: list[Result] = Field(
        default_factory=list,
        description="Reported results, copied exactly from the paper's own tables (or the code README reprinting "
                    "them), each row naming its source table.",
    )
    notes: PlainText | None = Field(default=None, description="Anything else worth knowing (optional).")

    @field_validator("year")
    @classmethod
    def year_is_plausible(cls, year: int) -> int:
        last = dt.date.today().year + 1
        if not FIRST_YEAR <= year <= last:
            raise ValueError(f"year {year} is not plausible; use a year between {FIRST_YEAR} and {last}")
        return year

    @field_validator("taxonomy", "authors", "sources", "models", "benchmarks")
    @classmethod
    def no_repeats(cls, items: list[str]) -> list[str]:
        seen: set[str] = set()
        for item in items:
            if item in seen:
                raise ValueError(f"'{item}' is listed twice; keep one")
            seen.add(item)
        return items

    @property
    def stage(self) -> str:
        """Top-level taxonomy node of the primary placement, e.g. 'prefilling'."""
        return self.taxonomy[0].split("/", 1)[0]

    @property
    def display_name(self) -> str:
        return self.name or self.title

    @property
    def first_announced(self) -> dt.date | None:
        """When the work first appeared: `announced`, else the first day of its new-style arXiv id's month."""
        if self.announced:
            return self.announced
        if self.arxiv and NEW_ARXIV_ID.match(self.arxiv):
            return dt.date(2000 + int(self.arxiv[:2]), int(self.arxiv[2:4]), 1)
        return None

    @property
    def headline(self) -> str:
        """'Name: Title' for lists and feeds, without repeating a name the title already starts with."""
        if not self.name or self.title.casefold().startswith(self.name.casefold()):
            return self.title
        return f"{self.name}: {self.title}"


class Facet(BaseModel):
    """A facet (attribute) a paper may carry, with the values it can take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: PlainText = Field(description="Human-readable name, e.g. 'Input modality'.")
    description: PlainText
    values: dict[Slug, PlainText] = Field(min_length=1, description="Allowed values with one-line meanings.")


class Node(BaseModel):
    """A node of the taxonomy tree. `id` is the last path segment; `path` joins the ancestors' ids."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)

    id: Slug
    name: PlainText
    description: PlainText
    survey_section: PlainText | None = None
    bottleneck: PlainText | None = None
    primary_metric: PlainText | None = None
    kind: Kind | None = Field(default=None, description="Kind of work this subtree holds; stages must set it.")
    beyond_survey: bool = Field(
        default=False, description="True for a node added after the survey, for work its taxonomy has no place for."
    )
    keywords: list[plain_text(max_length=80)] = Field(
        default_factory=list,
        description="Search phrases for new work on this node: `discover` queries arXiv with them and uses them "
                    "to place candidates.",
    )
    facets: dict[Slug, list[Slug]] = Field(
        default_factory=dict, description="Facets this node adds for its papers, with the allowed values."
    )
    children: list[Node] = Field(default_factory=list)


class Taxonomy(BaseModel):
    """The whole tree, with the facet vocabulary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    facets: dict[Slug, Facet]
    stages: list[Node] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def stages_declare_kind(cls, stages: list[Node]) -> list[Node]:
        for stage in stages:
            if stage.kind is None:
                raise ValueError(f"stage '{stage.id}' needs a 'kind' (method, benchmark, model, system or survey)")
        return stages

    @model_validator(mode="after")
    def facets_are_declared(self) -> Taxonomy:
        for node in self.stages:
            self._check_facets(node, node.id)
        return self

    def flatten(self) -> dict[str, PlacedNode]:
        """Every node by path, depth first, with what it inherits from its ancestors resolved."""
        placed: dict[str, PlacedNode] = {}

        def visit(node: Node, parent: PlacedNode | None) -> None:
            path = f"{parent.path}/{node.id}" if parent else node.id
            facets = dict(parent.facets) if parent else {}
            facets.update({name: tuple(values) for name, values in node.facets.items()})
            here = PlacedNode(
                path=path,
                node=node,
                parent=parent.path if parent else None,
                depth=parent.depth + 1 if parent else 0,
                kind=node.kind or parent.kind,
                bottleneck=node.bottleneck or (parent.bottleneck if parent else None),
                primary_metric=node.primary_metric or (parent.primary_metric if parent else None),
                facets=facets,
            )
            placed[path] = here
            for child in node.children:
                visit(child, here)

        for stage in self.stages:
            visit(stage, None)
        return placed

    def _check_facets(self, node: Node, path: str) -> None:
        for facet, values in node.facets.items():
            if facet not in self.facets:
                raise ValueError(f"node '{path}' uses facet '{facet}', which is not declared under 'facets'")
            unknown = sorted(set(values) - set(self.facets[facet].values))
            if unknown:
                raise ValueError(f"node '{path}' allows {unknown} for facet '{facet}', which it does not declare")
        for child in node.children:
            self._check_facets(child, f"{path}/{child.id}")


class Vocabulary(BaseModel):
    """`taxonomy/vocabulary.yaml`: the one spelling of each model and benchmark name, with its aliases."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[PlainText, list[PlainText]] = Field(description="Canonical model names, each with its aliases.")
    benchmarks: dict[PlainText, list[PlainText]] = Field(
        description="Canonical benchmark names, each with its aliases."
    )

    @model_validator(mode="after")
    def spellings_are_unique(self) -> Vocabulary:
        for field_name in ("models", "benchmarks"):
            owner: dict[str, str] = {}
            for canonical, aliases in getattr(self, field_name).items():
                for spelling in (canonical, *aliases):
                    key = spelling.casefold()
                    if key in owner:
                        raise ValueError(f"{field_name}: '{spelling}' is given for both '{owner[key]}' and "
                                         f"'{canonical}'; keep it under one name")
                    owner[key] = canonical
        return self

    def spellings(self, field_name: str) -> dict[str, str]:
        """Every spelling (case-folded), canonical names and aliases alike, mapped to its canonical name."""
        return {spelling.casefold(): canonical
                for canonical, aliases in getattr(self, field_name).items()
                for spelling in (canonical, *aliases)}


class DeclinedEntry(BaseModel):
    """An arXiv entry a maintainer decided not to add, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arxiv: Annotated[str, StringConstraints(pattern=ARXIV_PATTERN)] = Field(description="Bare arXiv id.")
    title: plain_text(max_length=300) | None = Field(default=None, description="Title, to recognise the entry.")
    reason: plain_text(min_length=8, max_length=300) = Field(
        description="One line: off scope (what it is instead), duplicate of papers/<id>.yaml, withdrawn, "
                    "wrong id in a list, no public page shows its authors, ..."
    )
    recheck: bool = Field(
        default=False,
        description="Declined only for now: in scope, but no public page in reach shows the facts an entry needs "
                    "(the full author list, the id). `discover` proposes it again; `coverage` counts it apart.",
    )


class DeclinedList(BaseModel):
    """`taxonomy/declined.yaml`: candidates that `discover` and `coverage` must not propose again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    declined: list[DeclinedEntry] = Field(default_factory=list)

    @field_validator("declined")
    @classmethod
    def each_id_once(cls, entries: list[DeclinedEntry]) -> list[DeclinedEntry]:
        seen: set[str] = set()
        for entry in entries:
            if entry.arxiv in seen:
                raise ValueError(f"arXiv {entry.arxiv} is declined twice; keep one entry")
            seen.add(entry.arxiv)
        return entries

    def ids(self) -> set[str]:
        return {entry.arxiv for entry in self.declined}


class OffScopeEntry(BaseModel):
    """A real arXiv entry outside the repository's scope, as its page shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arxiv: Annotated[str, StringConstraints(pattern=ARXIV_PATTERN)]
    title: plain_text(max_length=300)
    abstract: plain_text(min_length=20, max_length=3000)


class OffScopeList(BaseModel):
    """`taxonomy/off_scope.yaml`: the negatives `discover`'s relevance model learns from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entries: list[OffScopeEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class PlacedNode:
    """A taxonomy node at its place in the tree, with inherited kind, bottleneck, metric and facets."""

    path: str
    node: Node
    parent: str | None
    depth: int
    kind: str
    bottleneck: str | None
    primary_metric: str | None
    facets: dict[str, tuple[str, ...]]

    @property
    def stage(self) -> str:
        return self.path.split("/", 1)[0]
