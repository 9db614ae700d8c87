"""Writing output files so that a failure never leaves half a file."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def write_atomically(target: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then move it over `target` in one step."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def emit(text: str, output: Path | None, summary: str) -> None:
    """Write `text` to `output` atomically and say so on standard error, or print it when no file is given."""
    if output:
        write_atomically(output, text)
        print(f"wrote {summary} to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
