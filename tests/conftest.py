"""Shared fixtures: the repository root, throw-away repositories built from the real taxonomy, and an
untrained reference LVLM for the pilot tests that need a model but not a trained one."""

from __future__ import annotations

import http.server

import shutil
from pathlib import Path

import pytest
import torch

from pilot_experiments import synthvis
from pilot_experiments.model import LVLM, config_for

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A repository with the real taxonomy and vocabulary and one valid paper (tests/fixtures/fastv-2024.yaml)."""
    (tmp_path / "taxonomy").mkdir()
    for name in ("taxonomy.yaml", "vocabulary.yaml"):
        shutil.copy(ROOT / "taxonomy" / name, tmp_path / "taxonomy" / name)
    (tmp_path / "papers").mkdir()
    shutil.copy(FIXTURES / "fastv-2024.yaml", tmp_path / "papers" / "fastv-2024.yaml")
    return tmp_path


@pytest.fixture(scope="module")
def untrained_draft() -> LVLM:
    """The `draft` config with seed-0 random weights, in eval mode (one per test module)."""
    torch.manual_seed(0)
    return LVLM(config_for("draft", len(synthvis.Tokenizer()))).eval()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests and httpx honour proxy variables; loopback requests must not be sent to a proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def send_answer(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    """Answer a loopback test server's request with `status` and `body`."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
