"""`check-links` against a loopback server with live, dead, slow, flaky and redirecting URLs."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import links
from tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
SLOW_SECONDS = 1.5


class LinkServer(http.server.ThreadingHTTPServer):
    """Answers by path: /live 200, /dead 404, /slow after SLOW_SECONDS, /flaky 503 once then 200,
    /redirect 302 to /live, /busy/N after 0.2 s while counting requests in flight."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.hits: dict[str, int] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: LinkServer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):  # noqa: N802 - the base class's name
        server = self.server
        with server.lock:
            server.hits[self.path] = server.hits.get(self.path, 0) + 1
            hits = server.hits[self.path]
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        works = self.path == "/slow" or self.path.startswith("/busy/")
        time.sleep(SLOW_SECONDS if self.path == "/slow" else 0.2 if works else 0)
        # Out of flight before answering: once the client has the answer it may send its next
        # request, whose count must not overlap this one's.
        with server.lock:
            server.in_flight -= 1
        try:
            if self.path == "/flaky":
                self.answer(503 if hits == 1 else 200)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/live")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.answer(200 if works or self.path == "/live" else 404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the slow URL's timeout)

    def answer(self, status: int) -> None:
        body = b"ok" if status < 400 else b"no"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[LinkServer]:
    instance = LinkServer()
    thread = threading.Thread(target=instance.serve_forever, daemon=True)
    thread.start()
    yield instance
    instance.shutdown()
    instance.server_close()


def check(urls, **options):
    defaults = {"concurrency": 4, "timeout": 0.5, "retries": 1, "backoff": 0.01}
    return asyncio.run(links.check_urls(urls, **{**defaults, **options}))


def test_live_dead_and_slow_urls_are_told_apart(server):
    results = check([f"{server.base}/live", f"{server.base}/dead", f"{server.base}/slow"])
    live, dead, slow = results
    assert live.ok and live.status == 200 and live.attempts == 1
    assert not dead.ok and dead.status == 404 and dead.attempts == 1  # a 404 is final: no retry
    assert not slow.ok and slow.status is None and slow.error == "timed out" and slow.attempts == 2


def test_slow_url_within_the_timeout_is_live(server):
    (result,) = check([f"{server.base}/slow"], timeout=SLOW_SECONDS + 2, retries=0)
    assert result.ok


def test_temporary_failure_is_retried(server):
    (result,) = check([f"{server.base}/flaky"])
    assert result.ok and result.attempts == 2 and server.hits["/flaky"] == 2


def test_temporary_failure_without_retries_is_dead(server):
    (result,) = check([f"{server.base}/flaky"], retries=0)
    assert not result.ok and result.status == 503


def test_redirects_are_followed(server):
    (result,) = check([f"{server.base}/redirect"])
    assert result.ok and result.status == 200


def test_refused_connection_is_dead_with_a_reason():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as closed:
        port = closed.server_address[1]
    (result,) = check([f"http://127.0.0.1:{port}/live"], retries=0)
    assert not result.ok and result.status is None and "Connect" in result.error


def test_concurrency_is_bounded(server):
    urls = [f"{server.base}/busy/{n}" for n in range(12)]
    started = time.perf_counter()
    results = check(urls, concurrency=3, timeout=5)
    elapsed = time.perf_counter() - started
    assert all(r.ok for r in results)
    assert server.max_in_flight == 3
    assert elapsed >= 4 * 0.2  # 12 requests, 3 at a time, 0.2 s each


def test_results_keep_the_order_of_the_urls(server):
    urls = [f"{server.base}/dead", f"{server.base}/live", f"{server.base}/busy/1"]
    assert [r.url for r in check(urls)] == urls


def write_paper(folder: Path, paper_id: str, code: str) -> None:
    text = (ROOT / "tests" / "fixtures" / "site" / "papers" / "fastv-2024.yaml").read_text(encoding="utf-8")
    text = text.split("# Fixture numbers", 1)[0]  # its results row names a paper this folder lacks
    text = text.replace("id: fastv-2024", f"id: {paper_id}").replace("name: FastV", f"name: {paper_id}")
    text = text.replace("code: https://github.com/pkunlp-icler/FastV", f"code: {code}")
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("arxiv:", "doi:")))
    text = text.replace("title: \"An Image", f"title: \"{paper_id} An Image")
    (folder / f"{paper_id}.yaml").write_text(text + "\n", encoding="utf-8")


def test_cli_reports_dead_links_with_their_files(server, tmp_path, capsys):
    (tmp_path / "papers").mkdir()
    (tmp_path / "taxonomy").mkdir()
    for name in ("taxonomy.yaml", "vocabulary.yaml"):
        shutil.copy(ROOT / "taxonomy" / name, tmp_path / "taxonomy" / name)
    write_paper(tmp_path / "papers", "alive-2024", f"{server.base}/live")
    write_paper(tmp_path / "papers", "gone-2024", f"{server.base}/dead")
    status = main(["-C", str(tmp_path), "check-links", "--timeout", "2", "--retries", "0"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"dead: {server.base}/dead (HTTP 404, 1 tries) in papers/gone-2024.yaml" in out
    assert "1 of 2 links answered; 1 dead" in out
