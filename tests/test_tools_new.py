"""`new` and `import-bibtex` against recorded arXiv and Crossref responses served on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from conftest import send_answer
from tools.cli import main

RESPONSES = Path(__file__).parent / "fixtures" / "responses"


class RecordedSource(http.server.BaseHTTPRequestHandler):
    """Answers like export.arxiv.org/api/query and api.crossref.org/works from the recorded files."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        url = urlparse(self.path)
        if url.path == "/api/query":
            ids = parse_qs(url.query).get("id_list", [""])[0]
            recorded = RESPONSES / f"arxiv-{ids}.atom"
            self._send(200, (recorded if recorded.exists() else RESPONSES / "arxiv-empty.atom").read_bytes(),
                       "application/atom+xml")
        elif url.path.startswith("/works/"):
            doi = url.path.removeprefix("/works/").replace("/", "_")
            recorded = RESPONSES / f"crossref-{doi}.json"
            if recorded.exists():
                self._send(200, recorded.read_bytes(), "application/json")
            else:
                self._send(404, b"Resource not found.", "text/plain")
        else:
            self._send(500, b"unexpected path", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        send_answer(self, status, body, content_type)

    def log_message(self, *args: object) -> None:
        pass


pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordedSource)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("ARXIV_API_URL", f"{base}/api/query")
    monkeypatch.setenv("CROSSREF_API_URL", f"{base}/works")
    yield base
    server.shutdown()
    server.server_close()


@pytest.fixture
def empty_repo(tiny_repo: Path) -> Path:
    (tiny_repo / "papers" / "fastv-2024.yaml").unlink()
    return tiny_repo


def papers_in(root: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((root / "papers").iterdir())}


def test_new_from_arxiv_writes_a_draft_with_the_source_fields(empty_repo: Path, sources: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--root", str(empty_repo), "new", "--arxiv", "arXiv:2403.06764v3",
                 "--node", "prefilling/token-compression/attention-guided"])
    assert code == 0
    (name,) = papers_in(empty_repo)
    text = (empty_repo / "papers" / name).read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=../taxonomy/paper.schema.json\n")
    data = yaml.safe_load(text)
    assert data["id"] == name.removesuffix(".yaml") == "chen-2024"
    assert data["title"] == ("An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration "
                             "for Large Vision-Language Models")
    assert data["authors"][0] == "Liang Chen" and len(data["authors"]) == 7
    assert (data["arxiv"], data["doi"], data["year"]) == ("2403.06764", "10.1007/978-3-031-73004-7_2", 2024)
    assert data["code"] == "https://github.com/pkunlp-icler/FastV"
    assert (data["kind"], data["taxonomy"]) == ("method", ["prefilling/token-compression/attention-guided"])
    out = capsys.readouterr().out
    assert "wrote papers/chen-2024.yaml" in out
    assert "summary: is still a placeholder; write one sentence in your own words" in out


def test_new_draft_fails_validation_only_on_its_placeholders(empty_repo: Path, sources: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(empty_repo), "new", "--arxiv", "2403.06764"]) == 0
    capsys.readouterr()
    assert main(["--root", str(empty_repo), "validate"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "3 problems found"
    assert [line.split(": ", 2)[1] for line in lines[:-1]] == ["kind", "taxonomy.0", "summary"]
    assert all("is still a placeholder" in line for line in lines[:-1])
    path = empty_repo / "papers" / "chen-2024.yaml"
    filled = (path.read_text(encoding="utf-8")
              .replace("kind: 'TODO: set method, benchmark, model, system or survey'", "kind: method")
              .replace("- 'TODO: set a node path from taxonomy/taxonomy.yaml, e.g. prefilling/token-compression'",
                       "- prefilling/token-compression/attention-guided")
              .replace("summary: 'TODO: write one sentence in your own words on what the work does and how'",
                       "summary: Drops the least attended image tokens after the second layer."))
    path.write_text(filled, encoding="utf-8")
    assert main(["--root", str(empty_repo), "validate"]) == 0


def test_new_from_doi_reads_crossref(empty_repo: Path, sources: str) -> None:
    assert main(["--root", str(empty_repo), "new", "--doi", "https://doi.org/10.1007/978-3-031-73004-7_2"]) == 0
    data = yaml.safe_load((empty_repo / "papers" / "chen-2024.yaml").read_text(encoding="utf-8"))
    assert data["title"].startswith("An Image is Worth 1/2 Tokens After Layer 2")
    assert "\u00a0" not in data["title"]
    assert (data["venue"], data["venue_type"], data["year"]) == ("ECCV", "conference", 2024)
    assert data["doi"] == "10.1007/978-3-031-73004-7_2" and "arxiv" not in data


def test_new_refuses_a_duplicate_and_writes_nothing(tiny_repo: Path, sources: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = papers_in(tiny_repo)
    assert main(["--root", str(tiny_repo), "new", "--arxiv", "2403.06764"]) == 1
    assert "already in the repository as papers/fastv-2024.yaml" in capsys.readouterr().err
    assert main(["--root", str(tiny_repo), "new", "--doi", "10.1007/978-3-031-73004-7_2"]) == 1
    assert papers_in(tiny_repo) == before


def test_new_unknown_ids_and_nodes_are_one_line_errors(empty_repo: Path, sources: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(empty_repo), "new", "--arxiv", "2499.99999"]) == 2
    assert main(["--root", str(empty_repo), "new", "--doi", "10.1234/missing"]) == 2
    assert main(["--root", str(empty_repo), "new", "--arxiv", "not-an-id"]) == 1
    assert main(["--root", str(empty_repo), "new", "--arxiv", "2403.06764", "--node", "prefilling/token"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: arXiv has no paper 2499.99999; check the id",
        "error: Crossref has no record of DOI 10.1234/missing; check the DOI",
        "error: 'not-an-id' is not an arXiv id; give one like 2403.06764",
        "error: --node 'prefilling/token' is not a taxonomy node; did you mean 'prefilling/token-compression'?",
    ]
    assert papers_in(empty_repo) == {}


def test_new_without_network_is_one_line_exit_2(empty_repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 on loopback: nothing listens, so the connection is refused at once, as without network.
    monkeypatch.setenv("ARXIV_API_URL", "http://127.0.0.1:9/api/query")
    monkeypatch.setenv("CROSSREF_API_URL", "http://127.0.0.1:9/works")
    assert main(["--root", str(empty_repo), "new", "--arxiv", "2403.06764"]) == 2
    assert main(["--root", str(empty_repo), "new", "--doi", "10.1007/978-3-031-73004-7_2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("error: cannot fetch arXiv 2403.06764: ") and err[0].endswith("use --bibtex FILE")
    assert err[1].startswith("error: cannot fetch DOI 10.1007/978-3-031-73004-7_2 from Crossref: ")
    assert papers_in(empty_repo) == {}


def test_new_from_bibtex_file(empty_repo: Path, tmp_path: Path) -> None:
    bib = tmp_path / "one.bib"
    bib.write_text("@inproceedings{x, title={{ToMe}: Token Merging: Your {ViT} but Faster}, "
                   "author={Bolya, Daniel and Fu, Cheng-Yang and others}, booktitle={ICLR}, year={2023}}\n")
    assert main(["--root", str(empty_repo), "new", "--bibtex", str(bib), "--node",
                 "encoding/encoding-side-token-compression/attention-agnostic"]) == 0
    data = yaml.safe_load((empty_repo / "papers" / "tome-2023.yaml").read_text(encoding="utf-8"))
    assert data["name"] == "ToMe"
    assert (data["authors"], data["authors_truncated"]) == (["Daniel Bolya", "Cheng-Yang Fu"], True)
    assert (data["venue"], data["venue_type"], data["kind"]) == ("ICLR", "conference", "method")


def test_new_from_unreadable_bibtex_writes_nothing(empty_repo: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bib = tmp_path / "broken.bib"
    bib.write_text("@article{x, title={Unclosed, year=2020,\n")
    assert main(["--root", str(empty_repo), "new", "--bibtex", str(bib)]) == 2
    assert main(["--root", str(empty_repo), "new", "--bibtex", str(tmp_path / "absent.bib")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert papers_in(empty_repo) == {}


def test_import_bibtex_skips_papers_already_present(tiny_repo: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    exported = tmp_path / "all.bib"
    assert main(["--root", str(tiny_repo), "export-bibtex", "-o", str(exported)]) == 0
    with exported.open("a", encoding="utf-8") as bib:
        bib.write("\n@article{zhang2024other, title={Another Study of Visual Tokens}, author={Wei Zhang},"
                  " journal={TPAMI}, year={2024}, doi={10.1109/TPAMI.2024.0000001}}\n")
    assert main(["--root", str(tiny_repo), "import-bibtex", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "skipped chen2024fastv: already in the repository as papers/fastv-2024.yaml" in out
    assert "wrote papers/zhang-2024.yaml" in out
    data = yaml.safe_load((tiny_repo / "papers" / "zhang-2024.yaml").read_text(encoding="utf-8"))
    assert (data["venue"], data["venue_type"], data["doi"]) == ("TPAMI", "journal", "10.1109/TPAMI.2024.0000001")
