"""`refresh`: authors, venues and code links from loopback arXiv, Semantic Scholar and DBLP answers, written in
place with comments, order and quoting kept; every bad answer is one line, exit 2, nothing written."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from conftest import send_answer
from tools.cli import main
from tools.refresh import Change, apply, short_venue

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = ROOT / "tests" / "fixtures" / "refresh"

MADAKV = """# yaml-language-server: $schema=../taxonomy/paper.schema.json
id: madakv-2025
name: MadaKV
title: "MadaKV: Adaptive Modality-Perception KV Cache Eviction for Efficient Multimodal Long-Context Inference"
authors:
  - Kunxi Li
  - Zhonghua Jiang
  - Zhouzhou Shen
authors_truncated: true
year: 2025
venue: arXiv
venue_type: preprint
arxiv: "2506.15724"
code: https://github.com/example/madakv
kind: method
taxonomy:
  - decoding/kv-cache-compression/head-level
attributes:
  modality: general
  scenario: static  # a comment refresh must keep
summary: >-
  Evicts cached keys and values per attention head according to which modality each head prefers, and
  compensates the compression layer by layer.
sources: [figure-3]
added: 2026-11-21
"""

MEDA = """# yaml-language-server: $schema=../taxonomy/paper.schema.json
id: meda-2025
name: MEDA
title: 'MEDA: Dynamic KV Cache Allocation for Efficient Multimodal Long-Context Inference'
authors: [Zhongwei Wan, Hui Shen, Xin Wang, Che Liu, Zheda Mai, Mi Zhang]
year: 2025
venue: arXiv
venue_type: preprint
arxiv: "2502.17599"
kind: method
taxonomy:
  - decoding/kv-cache-compression/layer-level
attributes:
  modality: general
summary: >-
  Sizes each layer's KV cache by the entropy of its cross-modal attention and merges the evicted pairs into
  the kept ones.
sources: [figure-3]
added: 2026-11-21
"""


class Answers(http.server.BaseHTTPRequestHandler):
    """arXiv, Semantic Scholar and DBLP on one port; `server.fail` replaces one source's answer."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        url = urlparse(self.path)
        if url.path == "/api/query":
            self.answer("arxiv", 200, (ANSWERS / "arxiv.atom").read_bytes())
        elif url.path == "/search/publ/api":
            query = parse_qs(url.query)["q"][0]
            found = (ANSWERS / "dblp-meda.json").read_bytes() if query.startswith("MEDA") else \
                b'{"result": {"hits": {"@total": "0"}}}'
            self.answer("dblp", 200, found)
        else:
            self.answer("", 404, b"not found")

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.s2_ids.append(body["ids"])
        records = {r["externalIds"]["ArXiv"]: r for r in json.loads((ANSWERS / "semantic-scholar-batch.json")
                                                                    .read_text()) if r}
        answer = [records.get(i.removeprefix("ARXIV:")) for i in body["ids"]]
        self.answer("s2", 200, json.dumps(answer).encode())

    def answer(self, source: str, status: int, body: bytes) -> None:
        self.server.hits.append(source)
        if source in self.server.fail:
            status, body = self.server.fail[source]
        send_answer(self, status, body, "application/octet-stream")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           no_proxy: None) -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    httpd.fail, httpd.hits, httpd.s2_ids = {}, [], []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_port}"
    monkeypatch.setenv("ARXIV_API_URL", f"{base}/api/query")
    monkeypatch.setenv("SEMANTIC_SCHOLAR_API_URL", f"{base}/graph/v1")
    monkeypatch.setenv("DBLP_API_URL", f"{base}/search/publ/api")
    monkeypatch.setenv("EFFICIENT_LVLM_HTTP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tools.refresh.POLITE_DELAY_S", {"arXiv": 0.0, "Semantic Scholar": 0.0, "DBLP": 0.0})
    yield httpd
    httpd.shutdown()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "papers").mkdir(parents=True)
    (root / "taxonomy").mkdir()
    for name in ("taxonomy.yaml", "vocabulary.yaml"):
        shutil.copy(ROOT / "taxonomy" / name, root / "taxonomy" / name)
    (root / "papers" / "madakv-2025.yaml").write_text(MADAKV, encoding="utf-8")
    (root / "papers" / "meda-2025.yaml").write_text(MEDA, encoding="utf-8")
    return root


def files(root: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((root / "papers").iterdir())}


def test_refresh_completes_authors_venues_and_code_keeping_the_rest(repo: Path, server, capsys) -> None:
    assert main(["-C", str(repo), "refresh"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("2 files changed (authors 1, venues 2, code 1)")
    madakv = yaml.safe_load((repo / "papers" / "madakv-2025.yaml").read_text())
    assert madakv["authors"][3:] == ["Zhaode Wang", "Chengfei Lv", "Shengyu Zhang", "Fan Wu", "Fei Wu"]
    assert "authors_truncated" not in madakv
    assert (madakv["venue"], madakv["venue_type"], madakv["year"]) == ("ACL", "conference", 2025)
    assert madakv["code"] == "https://github.com/example/madakv"  # an existing code link is never replaced
    assert madakv["verified_from"] == ["https://arxiv.org/abs/2506.15724",
                                       "https://www.semanticscholar.org/arxiv/2506.15724"]
    meda_text = (repo / "papers" / "meda-2025.yaml").read_text()
    meda = yaml.safe_load(meda_text)
    assert (meda["venue"], meda["venue_type"]) == ("NAACL", "conference")  # DBLP, skipping its CoRR record
    assert meda["code"] == "https://github.com/AIoT-MLSys-Lab/MEDA"
    assert meda["verified_from"][-1] == "https://aclanthology.org/2025.naacl-long.125"
    # Round trip: quoting, flow lists and comments as they were; new keys in the schema's order.
    assert "title: 'MEDA: Dynamic KV Cache" in meda_text
    assert "authors: [Zhongwei Wan, Hui Shen" in meda_text
    assert "scenario: static  # a comment refresh must keep" in (repo / "papers" / "madakv-2025.yaml").read_text()
    assert list(meda).index("code") == list(meda).index("arxiv") + 1
    assert main(["-C", str(repo), "validate"]) == 0


def test_dry_run_offline_answers_from_the_cache_and_writes_nothing(repo: Path, server, capsys) -> None:
    before = files(repo)
    assert main(["-C", str(repo), "refresh", "--dry-run", "--only", "venues"]) == 0
    online = capsys.readouterr().out
    server.shutdown()  # from here on only the cache can answer
    assert main(["-C", str(repo), "refresh", "--dry-run", "--offline", "--only", "venues"]) == 0
    offline = capsys.readouterr().out
    assert offline == online
    assert "+venue: ACL" in offline and "+venue: NAACL" in offline and "-venue: arXiv" in offline
    assert offline.strip().endswith("2 files would change (venues 2)")
    assert files(repo) == before


def test_only_and_ids_limit_what_is_asked_and_changed(repo: Path, server, capsys) -> None:
    assert main(["-C", str(repo), "refresh", "--only", "code", "--ids", "meda-2025"]) == 0
    assert set(server.hits) == {"arxiv"}
    assert "1 files changed (code 1)" in capsys.readouterr().out
    assert yaml.safe_load((repo / "papers" / "madakv-2025.yaml").read_text())["authors_truncated"] is True


def test_an_unknown_id_is_a_clear_error(repo: Path, server, capsys) -> None:
    assert main(["-C", str(repo), "refresh", "--ids", "nope-2024"]) == 1
    assert "no paper file for nope-2024" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "status", "body", "message"), [
    ("s2", 429, b"Too Many Requests", "Semantic Scholar answered HTTP 429 (too many requests)"),
    ("s2", 500, b"oops", "Semantic Scholar answered HTTP 500"),
    ("s2", 200, b"<!DOCTYPE html><html>maintenance</html>", "Semantic Scholar sent an HTML page instead of JSON"),
    ("s2", 200, b'[{"title": "MadaKV', "Semantic Scholar sent malformed or cut-short JSON instead of JSON"),
    ("s2", 200, b"[]", "does not match the ids asked for"),
    ("dblp", 200, b'{"result": {"hi', "DBLP sent malformed or cut-short JSON"),
    ("dblp", 200, b'{"unexpected": 1}', "DBLP's answer has no result.hits"),
    ("arxiv", 200, b"<feed xmlns='http://www.w3.org/2005/Atom'><entry>", "is not well-formed XML"),
    ("arxiv", 503, b"busy", "arXiv answered HTTP 503"),
])
def test_a_bad_answer_is_one_line_exit_2_and_nothing_written(repo, server, capsys, source, status, body, message):
    server.fail[source] = (status, body)
    before = files(repo)
    assert main(["-C", str(repo), "refresh"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert files(repo) == before


def test_offline_without_a_cache_says_to_fill_it(repo: Path, server, capsys) -> None:
    assert main(["-C", str(repo), "refresh", "--offline"]) == 2
    err = capsys.readouterr().err
    assert "no cached answer" in err and "run once without --offline" in err


def test_no_network_is_one_line_and_exit_2(repo: Path, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("ARXIV_API_URL", "http://127.0.0.1:9/api/query")
    monkeypatch.setenv("EFFICIENT_LVLM_HTTP_CACHE", str(tmp_path / "cache"))
    before = files(repo)
    assert main(["-C", str(repo), "refresh"]) == 2
    assert "cannot reach arXiv" in capsys.readouterr().err
    assert files(repo) == before


def test_every_paper_file_survives_a_round_trip_unchanged() -> None:
    for path in sorted((ROOT / "papers").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert apply(Change(path.stem, path), text) == text, path.name


@pytest.mark.parametrize(("name", "short"), [
    ("Annual Meeting of the Association for Computational Linguistics", "ACL"),
    ("Neural Information Processing Systems", "NeurIPS"), ("NAACL (Long Papers)", "NAACL"),
    ("Trans. Mach. Learn. Res.", "TMLR"), ("arXiv.org", None), ("CoRR", None), ("Some Workshop", None),
])
def test_venue_names_are_shortened(name: str, short: str | None) -> None:
    assert short_venue(name) == short
