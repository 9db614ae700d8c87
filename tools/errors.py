"""Exception types of the toolchain and the `Problem` record every data error is reported as."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file, rendered as `papers/foo.yaml:12: taxonomy: <message>`.

    `line` is 1-based (None when the file could not be read at all); `field` is the dotted place in the
    file (`authors.2`, `attributes.modality`) or None for the file as a whole.
    """

    path: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    @property
    def sort_key(self) -> tuple[str, int, str]:
        return (self.path, self.line or 0, self.field or "")


def display_path(path: Path, root: Path) -> str:
    """The path as a user should see it: relative to the repository root when it lies inside it."""
    shown, base = str(path), str(root)
    if base == "." and not path.is_absolute():
        return path.as_posix()
    if shown.startswith(base.rstrip("/") + "/"):  # the usual case, with no file system access
        return shown[len(base.rstrip("/")) + 1 :]
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


class ToolError(Exception):
    """Base of every error the CLI turns into a message and an exit status instead of a traceback."""

    exit_code = 1


class DataError(ToolError):
    """The repository's data (paper files, taxonomy) breaks one or more rules."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: p.sort_key)
        super().__init__("\n".join(str(p) for p in self.problems))


class SourceError(ToolError):
    """An external source (arXiv, Crossref, a BibTeX file) could not be reached or read."""

    exit_code = 2


class UsageError(ToolError):
    """The command was asked for something it cannot do (e.g. a duplicate paper, an unknown node)."""

    exit_code = 1


class SiteError(ToolError):
    """The site cannot be generated; the message says which file or setting to fix."""
