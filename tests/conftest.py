"""Shared fixtures: the repository root and throw-away repositories built from the real taxonomy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A repository with the real taxonomy and one valid paper (tests/fixtures/fastv-2024.yaml)."""
    (tmp_path / "taxonomy").mkdir()
    shutil.copy(ROOT / "taxonomy" / "taxonomy.yaml", tmp_path / "taxonomy" / "taxonomy.yaml")
    (tmp_path / "papers").mkdir()
    shutil.copy(FIXTURES / "fastv-2024.yaml", tmp_path / "papers" / "fastv-2024.yaml")
    return tmp_path
