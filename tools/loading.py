"""Safe, fast loading of the taxonomy and the paper files into validated models.

YAML is parsed with libyaml's safe C loader. The happy path touches each file once (one read, a few C-level
scans of the text, one parse, one `model_validate`); only when something is wrong is the file parsed again to
find the line of the offending field. Every problem of every file is collected and raised together as one
`DataError`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tools.errors import DataError, Problem, display_path
from tools.models import PLACEHOLDER, DeclinedList, OffScopeList, Paper, Taxonomy, Vocabulary

ModelT = TypeVar("ModelT", bound=BaseModel)
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 20
BRACKETS_BEFORE_DEPTH_CHECK = 200
PAPERS_DIR = "papers"
TAXONOMY_FILE = Path("taxonomy") / "taxonomy.yaml"
VOCABULARY_FILE = Path("taxonomy") / "vocabulary.yaml"
DECLINED_FILE = Path("taxonomy") / "declined.yaml"
OFF_SCOPE_FILE = Path("taxonomy") / "off_scope.yaml"

# Only a trigger: when it matches, the YAML events decide whether the file really uses an anchor or alias.
ANCHOR_HINT = re.compile(r"(?:^|[\s\[{,:-])[&*][^\s,\[\]{}]")
TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][\w-]*)[ \t]*:", re.MULTILINE)
KEY_LINE = re.compile(r"\n[A-Za-z_]")  # cheap count of unindented lines, each a top-level key
CONTENT_LINE = re.compile(r"^[ \t]*[^#\s]", re.MULTILINE)  # a line that is neither blank nor a comment


@dataclass
class LoadedFile:
    """A parsed YAML file: its display path, text and data (None when unreadable), and what went wrong."""

    path: Path
    shown: str
    text: str = ""
    data: Any = None
    problems: list[Problem] = field(default_factory=list)

    def problem(self, line: int | None, field_name: str | None, message: str) -> None:
        self.problems.append(Problem(self.shown, line, field_name, message))


def read_yaml(path: Path, root: Path) -> LoadedFile:
    """Read and safely parse one YAML file; on any problem `data` is None and `problems` says why."""
    loaded = LoadedFile(path, display_path(path, root))
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE_BYTES:
                loaded.problem(None, None, f"file is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit; "
                                           "a paper file is a few kilobytes, so this is not one")
                return loaded
            raw = handle.read()
    except OSError as exc:
        loaded.problem(None, None, f"cannot read the file: {exc.strerror or exc}")
        return loaded
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        loaded.problem(line, None, f"byte 0x{raw[exc.start]:02x} is not valid UTF-8; save the file as UTF-8")
        return loaded
    loaded.text = text
    if not CONTENT_LINE.search(text):
        loaded.problem(1, None, "file is empty; copy papers/fastv-2024.yaml or run `python -m tools new --arxiv ID`")
        return loaded
    if "\t" in text:
        offset = text.index("\t")
        line = text.count("\n", 0, offset) + 1
        loaded.problem(line, _field_at_line(text, line), "tab character; YAML files here are indented with spaces only")
        return loaded
    if ("&" in text or "*" in text) and ANCHOR_HINT.search(text) and _uses_anchors(loaded):
        return loaded
    # libyaml's composer recurses once per nesting level and crashes the interpreter on deep input;
    # a real paper has a handful of brackets, so only suspicious files pay for the exact check.
    if text.count("[") + text.count("{") + text.count("- -") > BRACKETS_BEFORE_DEPTH_CHECK and _too_deep(loaded):
        return loaded
    try:
        data = yaml.load(text, Loader=SafeLoader)  # noqa: S506 - CSafeLoader is the safe loader
    except yaml.MarkedYAMLError as exc:
        # An unfinished scalar or flow collection ('while scanning a quoted scalar', 'while parsing a flow
        # sequence') is best shown where it starts; a block-level error where the parser gave up.
        at_start = exc.context and exc.context.startswith(("while scanning", "while parsing a flow"))
        mark = exc.context_mark if at_start and exc.context_mark else exc.problem_mark
        line = mark.line + 1 if mark else None
        loaded.problem(line, _field_at_line(text, line), _yaml_message(exc, text))
        return loaded
    except yaml.YAMLError as exc:
        loaded.problem(None, None, f"YAML error: {exc}")
        return loaded
    except (ValueError, OverflowError) as exc:  # a scalar that looks like a date but is not one: 2026-13-45
        _report_bad_value(loaded, exc)
        return loaded
    if not isinstance(data, dict):
        loaded.problem(1, None, f"the file must be a mapping of fields ('title: ...'), not a {_yaml_type(data)}")
        return loaded
    key_lines = len(KEY_LINE.findall(text)) + (text[:1].isalpha() or text[:1] == "_")
    if key_lines != len(data):  # more unindented keys than fields: look for a key given twice
        seen: set[str] = set()
        for match in TOP_LEVEL_KEY.finditer(text):
            if match.group(1) in seen:
                line = text.count("\n", 0, match.start()) + 1
                loaded.problem(line, match.group(1), "appears twice; YAML keeps only the last one, so delete one")
            seen.add(match.group(1))
        if loaded.problems:
            return loaded
    loaded.data = data
    return loaded


def _uses_anchors(loaded: LoadedFile) -> bool:
    try:
        for event in yaml.parse(loaded.text, Loader=SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1
                loaded.problem(line, _field_at_line(loaded.text, line),
                               "YAML anchors and aliases (&name, *name) are not allowed; write the value out")
                return True
    except yaml.YAMLError:
        return False  # the parse proper reports the syntax error
    return False


def _too_deep(loaded: LoadedFile) -> bool:
    depth = 0
    try:
        for event in yaml.parse(loaded.text, Loader=SafeLoader):  # the parser itself keeps an explicit stack
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    _report_too_deep(loaded, event.start_mark)
                    return True
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        # The libyaml in PyYAML 6.0.4's wheels stops at a nesting limit of its own while it scans ahead,
        # before the parser hands over the event that would cross ours; any other error is a syntax
        # error, which the parse proper reports.
        if isinstance(exc, yaml.MarkedYAMLError) and "maximum nesting depth" in (exc.problem or ""):
            _report_too_deep(loaded, exc.problem_mark)
            return True
    return False


def _report_too_deep(loaded: LoadedFile, mark: yaml.Mark | None) -> None:
    line = mark.line + 1 if mark else None
    loaded.problem(line, _field_at_line(loaded.text, line),
                   f"lists and mappings nested more than {MAX_DEPTH} levels deep; a paper needs 2")


def _report_bad_value(loaded: LoadedFile, exc: Exception) -> None:
    """Find the scalar the constructor choked on by constructing each top-level value on its own."""
    constructor = yaml.constructor.SafeConstructor()
    root = yaml.compose(loaded.text, Loader=SafeLoader)
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        try:
            constructor.construct_object(value, deep=True)
        except (ValueError, OverflowError) as error:
            shown = value.value if isinstance(value, yaml.ScalarNode) else key.value
            loaded.problem(value.start_mark.line + 1, key.value,
                           f"'{shown}' cannot be read ({error}); dates are written YYYY-MM-DD")
            return
    loaded.problem(1, None, f"a value cannot be read: {exc}")


def _unclosed_quote_line(text: str, before: int) -> int | None:
    for number, line in enumerate(text.splitlines()[:before], start=1):
        if line.count('"') % 2 or (line.count("'") % 2 and re.match(r"^\s*[\w-]+:\s*'", line)):
            return number
    return None


def _yaml_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    problem = exc.problem or "invalid YAML"
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
        tag = re.search(r"'([^']*)'", problem)
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "?"
        return (f"YAML tag '{shown}' is not allowed; paper files hold only plain text, numbers, dates, "
                "lists and mappings")
    message = f"YAML syntax error: {problem}"
    if exc.context and exc.context_mark and exc.problem_mark:
        message = f"YAML syntax error {exc.context}: {problem} at line {exc.problem_mark.line + 1}"
    quote = _unclosed_quote_line(text, exc.problem_mark.line + 1) if exc.problem_mark else None
    return f"{message} (is the quote on line {quote} closed?)" if quote else message


def _yaml_type(data: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(data), type(data).__name__)


def _field_at_line(text: str, line: int | None) -> str | None:
    """The top-level key whose block holds `line` (1-based), found by scanning back for an unindented key."""
    if line is None:
        return None
    lines = text.splitlines()
    for number in range(min(line, len(lines)) - 1, -1, -1):
        match = TOP_LEVEL_KEY.match(lines[number])
        if match:
            return match.group(1)
    return None


def line_of(text: str, loc: tuple[Any, ...]) -> int:
    """1-based line of the value at `loc` (a pydantic error location), as deep as the file has it."""
    return locate(text, loc)[0]


def locate(text: str, loc: tuple[Any, ...]) -> tuple[int, yaml.Node | None]:
    """(1-based line, YAML node) of the value at `loc`, or of the deepest part of it the file has."""
    try:
        node = yaml.compose(text, Loader=SafeLoader)
    except yaml.YAMLError:
        return 1, None
    line = 1
    for step in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == step), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
            if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.value:
                continue
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
            line = node.start_mark.line + 1
        else:
            break
    return line, node


PATTERN_HINTS = {
    "id": "must be a lowercase slug of letters, digits and hyphens, like 'fastv-2024'",
    "arxiv": "is not a bare arXiv id like '2403.06764' (no 'arXiv:' prefix, no version suffix)",
    "doi": "is not a DOI like '10.1109/CVPR52733.2024.01234' (no https://doi.org/ prefix)",
    "taxonomy": "is not a node path like 'prefilling/token-compression/attention-guided'",
}


def _error_message(error: dict[str, Any], model: type[BaseModel], field_name: str, raw: str | None = None) -> str:
    kind, given = error["type"], error.get("input")
    shown = repr(given) if not isinstance(given, dict | list) else _yaml_type(given)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    if isinstance(given, str) and given.startswith(PLACEHOLDER):
        return f"is still a placeholder; {given[len(PLACEHOLDER):].strip()}"
    if kind == "missing":
        example = " (see papers/fastv-2024.yaml)" if model is Paper else ""
        return f"is required but missing; add it{example}"
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        close = difflib.get_close_matches(name, list(model.model_fields), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed fields: {', '.join(model.model_fields)}"
        return f"unknown field '{name}'; {hint}"
    if kind == "string_pattern_mismatch":
        return f"{shown} {PATTERN_HINTS.get(field_name, 'has the wrong format')}"
    if kind == "string_type" and isinstance(given, int | float) and not isinstance(given, bool):
        written = raw if raw is not None else given  # 2401.00010 as written, not the float 2401.0001
        return f"{written} is read as a number; put it in quotes: {field_name}: \"{written}\""
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"{shown} is not a whole number; write it like {field_name}: 2024"
    if kind in {"bool_parsing", "bool_type"}:
        return f"{shown} is not true or false"
    if kind == "list_type":
        return f"must be a list, one item per line starting with '- ' (got {shown})"
    if kind == "dict_type":
        return f"must be a mapping with one 'name: value' per line (got {shown})"
    if kind == "too_short" and isinstance(given, list):
        return "needs at least one item"
    if kind in {"url_scheme", "url_parsing"}:
        return f"{shown} is not a web address; give a full http(s):// URL"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    message = error["msg"]
    return f"{message[0].lower()}{message[1:]} (got {shown})"


def validation_problems(exc: ValidationError, loaded: LoadedFile, model: type[BaseModel]) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        field_name = ".".join(str(part) for part in loc) or None
        top = str(loc[0]) if loc else ""
        if error["type"] == "missing":  # point at the mapping that lacks the field
            line, node = (locate(loaded.text, loc[:-1])[0] if len(loc) > 1 else 1), None
        else:
            line, node = locate(loaded.text, loc)
        raw = node.value if isinstance(node, yaml.ScalarNode) else None
        problems.append(Problem(loaded.shown, line, field_name, _error_message(error, model, top, raw)))
    return problems


def _load_model(root: Path, relative: Path, model: type[ModelT]) -> ModelT:
    loaded = read_yaml(root / relative, root)
    if loaded.problems:
        raise DataError(loaded.problems)
    try:
        return model.model_validate(loaded.data)
    except ValidationError as exc:
        raise DataError(validation_problems(exc, loaded, model)) from None


def load_taxonomy(root: Path) -> Taxonomy:
    return _load_model(root, TAXONOMY_FILE, Taxonomy)


def load_vocabulary(root: Path) -> Vocabulary:
    return _load_model(root, VOCABULARY_FILE, Vocabulary)


def load_declined(root: Path) -> DeclinedList:
    """The declined candidates; a repository without the file has declined nothing."""
    if not (root / DECLINED_FILE).exists():
        return DeclinedList()
    return _load_model(root, DECLINED_FILE, DeclinedList)


def load_off_scope(root: Path) -> OffScopeList:
    """The off-scope arXiv entries `discover` learns from; none when the file is absent."""
    if not (root / OFF_SCOPE_FILE).exists():
        return OffScopeList()
    return _load_model(root, OFF_SCOPE_FILE, OffScopeList)


@dataclass(frozen=True)
class LoadedPaper:
    """A validated paper with the file it came from and that file's text (for line numbers in later checks)."""

    paper: Paper
    path: Path
    shown: str
    text: str


def load_papers(files: Iterable[Path], root: Path) -> tuple[list[LoadedPaper], list[Problem]]:
    """Parse and validate paper files one by one; files with problems are left out and their problems returned."""
    loaded_papers: list[LoadedPaper] = []
    problems: list[Problem] = []
    validate = Paper.model_validate
    for path in files:
        loaded = read_yaml(path, root)
        if loaded.problems:
            problems.extend(loaded.problems)
            continue
        try:
            paper = validate(loaded.data)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, loaded, Paper))
            continue
        loaded_papers.append(LoadedPaper(paper, path, loaded.shown, loaded.text))
    return loaded_papers, problems


def paper_files(root: Path) -> tuple[list[Path], list[Problem]]:
    folder = root / PAPERS_DIR
    problems = [
        Problem(display_path(p, root), None, None, "paper files end in '.yaml'; rename it")
        for p in sorted(folder.glob("*.yml"))
    ]
    return sorted(folder.glob("*.yaml")), problems
