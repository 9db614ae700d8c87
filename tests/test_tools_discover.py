"""`discover`: ranked, placed and de-duplicated arXiv candidates, offline from saved feeds and from a loopback
arXiv API; every bad answer is one line and exit 2 with nothing written."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import send_answer
from tools.cli import main
from tools.loading import load_taxonomy

ROOT = Path(__file__).resolve().parents[1]
FEED = ROOT / "tests" / "fixtures" / "discover" / "feed.xml"
NODES = load_taxonomy(ROOT).flatten()


def entry(arxiv: str, title: str, summary: str, published: str = "2026-08-03") -> str:
    return (f"<entry><id>http://arxiv.org/abs/{arxiv}v1</id><published>{published}T00:00:00Z</published>"
            f"<title>{title}</title><summary>{summary}</summary><author><name>Ada Lovelace</name></author>"
            "</entry>")


def atom(*entries: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom" '
            'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">'
            f"<opensearch:totalResults>{len(entries)}</opensearch:totalResults>{''.join(entries)}</feed>\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the real data (papers, taxonomy, off-scope negatives, declined list) to write drafts into."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "papers", root / "papers")
    shutil.copytree(ROOT / "taxonomy", root / "taxonomy")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_feed_gives_ranked_candidates_with_nodes_as_json(repo: Path, capsys) -> None:
    assert main(["-C", str(repo), "discover", "--from-feed", str(FEED), "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert len(ranked) == 232
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for r in ranked:
        assert {"arxiv", "title", "published", "score", "nodes", "duplicate_of"} <= set(r)
        assert len(r["nodes"]) == 3 and all(n["node"] in NODES for n in r["nodes"])
    labels = dict(line.split("\t")[:2] for line in FEED.with_name("labels.tsv").read_text().splitlines())
    top = [labels[r["arxiv"]] for r in ranked[:20]]
    assert top.count("in") >= 15, "the ranker must put in-scope work first"


def test_known_declined_and_near_duplicate_titles_are_not_proposed(repo: Path, tmp_path: Path, capsys) -> None:
    fastv = yaml.safe_load((repo / "papers" / "fastv-2024.yaml").read_text())
    declined = yaml.safe_load((repo / "taxonomy" / "declined.yaml").read_text())["declined"][0]
    feed = tmp_path / "feed.xml"
    feed.write_text(atom(
        entry(fastv["arxiv"], fastv["title"], "Visual token pruning after layer two of a vision-language model."),
        entry("2608.99991", fastv["title"].replace("Plug-and-Play", "Plug and Play"),
              "The same paper announced again under another id."),
        entry(declined["arxiv"], "A declined candidate", "Visual token pruning for a multimodal model."),
        entry("2608.99992", "PruneZoo: Training-Free Visual Token Pruning for Multimodal Large Language Models",
              "We drop redundant visual tokens inside the LLM to speed up prefill of vision-language models."),
    ))
    assert main(["-C", str(repo), "discover", "--from-feed", str(feed), "--json"]) == 0
    by_id = {r["arxiv"]: r for r in json.loads(capsys.readouterr().out)}
    assert by_id[fastv["arxiv"]]["duplicate_of"] == "fastv-2024"
    assert by_id["2608.99991"]["duplicate_of"] == "fastv-2024"
    assert by_id[declined["arxiv"]]["declined"] == declined["reason"]
    assert by_id["2608.99992"]["duplicate_of"] is None and by_id["2608.99992"]["score"] > 0.5
    assert by_id["2608.99992"]["nodes"][0]["node"].startswith(("prefilling/token-compression", "encoding/"))
    assert main(["-C", str(repo), "discover", "--from-feed", str(feed), "--checklist"]) == 0
    report = capsys.readouterr().out
    assert "- [ ] **" in report and "PruneZoo" in report
    assert "2 are already in the repository and 1 were declined before" in report
    assert fastv["title"] not in report


def test_a_candidate_declined_until_a_source_appears_is_proposed_again(repo: Path, tmp_path: Path, capsys) -> None:
    path = repo / "taxonomy" / "declined.yaml"
    path.write_text(path.read_text(encoding="utf-8") + '  - arxiv: "2608.99994"\n'
                    '    reason: "in scope, but no public page shows the authors"\n    recheck: true\n', encoding="utf-8")
    feed = tmp_path / "feed.xml"
    feed.write_text(atom(entry("2608.99994", "TrimVid: Training-Free Video Token Pruning for Video LLMs",
                               "We prune redundant video tokens across frames to speed up video language models.")))
    assert main(["-C", str(repo), "discover", "--from-feed", str(feed), "--json"]) == 0
    (ranked,) = json.loads(capsys.readouterr().out)
    assert ranked["arxiv"] == "2608.99994" and ranked["declined"] is None


def test_write_drafts_the_best_new_candidates_for_review(repo: Path, tmp_path: Path, capsys) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_text(atom(entry(
        "2608.99993", "GlimpseKV: Visual KV Cache Eviction for Long Video Language Models",
        "We evict the keys and values of redundant video frames from the KV cache of a video LLM during decoding.")))
    before = set((repo / "papers").iterdir())
    try:
        assert main(["-C", str(repo), "discover", "--from-feed", str(feed), "--write", "1"]) == 0
        assert "wrote papers/glimpsekv-2026.yaml" in capsys.readouterr().out
        draft = yaml.safe_load((repo / "papers" / "glimpsekv-2026.yaml").read_text())
        assert draft["arxiv"] == "2608.99993" and draft["verified_from"] == ["https://arxiv.org/abs/2608.99993"]
        assert draft["taxonomy"][0].startswith("decoding/kv-cache-compression")
        assert "Proposed by discover" in draft["notes"] and draft["summary"].startswith("TODO:")
        assert main(["-C", str(repo), "validate"]) == 1  # the summary is left for a person to write
        assert "summary: is still a placeholder" in capsys.readouterr().err
    finally:
        for path in set((repo / "papers").iterdir()) - before:
            path.unlink()


BAD_FEEDS = {
    "html": (b"<!DOCTYPE html><html><body>Rate exceeded.</body></html>", "is an HTML page, not an arXiv Atom feed"),
    "truncated": (atom(entry("2608.00001", "A title", "An abstract."))[:-40].encode(), "is not well-formed XML"),
    "empty": (b"", "is empty, not an arXiv Atom feed"),
    "api-error": (atom("<entry><id>http://arxiv.org/api/errors#incorrect_id</id><title>Error</title>"
                       "<summary>incorrect id format for 1234</summary></entry>").encode(),
                  "the arXiv API answered with an error: incorrect id format for 1234"),
    "malformed-id": (atom(entry("cs/0101001x", "Old", "Old id.")).encode(), "is not an arXiv abstract URL"),
    "not-atom": (b"<?xml version='1.0'?><rss><channel/></rss>", "is XML but not an Atom feed"),
}


@pytest.mark.parametrize("name", sorted(BAD_FEEDS))
def test_a_bad_feed_is_one_line_and_exit_2(name: str, repo: Path, tmp_path: Path, capsys) -> None:
    content, message = BAD_FEEDS[name]
    feed = tmp_path / "feed.xml"
    feed.write_bytes(content)
    before = snapshot(repo)
    assert main(["-C", str(repo), "discover", "--from-feed", str(feed), "--write", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert snapshot(repo) == before


class FakeArxiv(http.server.BaseHTTPRequestHandler):
    """Answers /api/query with what the test put in `self.server.answer` (status, body) and keeps the query."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        self.server.queries.append(self.path)
        status, body = self.server.answer
        send_answer(self, status, body, "application/atom+xml")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def arxiv_api(monkeypatch: pytest.MonkeyPatch, no_proxy: None) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeArxiv)
    server.queries, server.answer = [], (200, b"")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ARXIV_API_URL", f"http://127.0.0.1:{server.server_port}/api/query")
    monkeypatch.setattr("tools.arxiv_feed.DELAY_S", 0.0)
    monkeypatch.setattr("tools.arxiv_feed.RETRIES", 0)
    yield server
    server.shutdown()


def test_the_api_is_queried_with_the_window_categories_and_keywords(repo: Path, arxiv_api, capsys) -> None:
    arxiv_api.answer = (200, FEED.read_bytes())
    assert main(["-C", str(repo), "discover", "--since", "2026-11-28", "--until", "2026-12-05", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 232
    query = arxiv_api.queries[0]
    assert "submittedDate%3A%5B202611280000+TO+202612052359%5D" in query
    assert "cat%3Acs.CV" in query and "visual+token+pruning" in query


@pytest.mark.parametrize(("status", "body", "message"), [
    (429, b"Rate exceeded.", "the arXiv API answered HTTP 429; arXiv asks clients to slow down"),
    (500, b"Internal error", "the arXiv API answered HTTP 500; arXiv had a problem"),
    (200, b"<html><body>Service unavailable</body></html>", "the arXiv API is an HTML page"),
    (200, atom().encode(), "the arXiv API returned no entries for 2026-11-28 to 2026-12-05"),
])
def test_a_bad_api_answer_is_one_line_and_exit_2(repo: Path, arxiv_api, capsys, status, body, message) -> None:
    arxiv_api.answer = (status, body)
    before = snapshot(repo)
    code = main(["-C", str(repo), "discover", "--since", "2026-11-28", "--until", "2026-12-05", "--write", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert snapshot(repo) == before


def test_no_network_is_one_line_and_exit_2(repo: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ARXIV_API_URL", "http://127.0.0.1:9/api/query")  # the discard port: nothing listens
    monkeypatch.setattr("tools.arxiv_feed.DELAY_S", 0.0)
    monkeypatch.setattr("tools.arxiv_feed.RETRIES", 0)
    assert main(["-C", str(repo), "discover"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the arXiv API" in err[0] and "--from-feed" in err[0]


def test_evaluate_writes_the_measured_figures(repo: Path, capsys) -> None:
    shutil.copytree(ROOT / "tests" / "fixtures" / "discover", repo / "tests" / "fixtures" / "discover",
                    dirs_exist_ok=True)
    assert main(["-C", str(repo), "discover", "--evaluate"]) == 0
    figures = json.loads((repo / "bench-results" / "discover.json").read_text())
    assert figures["feed_entries"] == 232 and figures["feed_in_scope"] == 59
    assert 0.3 < figures["top1"] <= figures["top3"] <= 1
    assert set(figures["targets"]) == {"top1", "top3", "precision_at_20"}
    assert "| precision_at_20 |" in capsys.readouterr().out
