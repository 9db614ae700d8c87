"""The bad-input corpus (tests/bad_papers/): each broken file gets its own precise message, naming file, line and
field; no traceback; nothing is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cli import main

CORPUS = Path(__file__).parent / "bad_papers"

# file -> the exact start of the one problem it must produce (file:line: field: message ...).
EXPECTED = {
    "arxiv-with-prefix": "papers/arxiv-with-prefix.yaml:11: arxiv: 'arXiv:2401.00001v2' is not a bare arXiv id",
    "bad-slug-id": "papers/bad-slug-id.yaml:2: id: 'Bad_Slug_ID' must be a lowercase slug",
    "bad-venue-type": "papers/bad-venue-type.yaml:10: venue_type: input should be 'conference', 'journal', "
                      "'workshop' or 'preprint' (got 'poster')",
    "bare-leaf-node": "papers/bare-leaf-node.yaml:15: taxonomy.0: 'attention-guided' is not a node; "
                      "did you mean 'prefilling/token-compression/attention-guided'?",
    "billion-laughs": "papers/billion-laughs.yaml:2: a: YAML anchors and aliases (&name, *name) are not allowed",
    "comments-only": "papers/comments-only.yaml:1: file is empty",
    "control-character": "papers/control-character.yaml:4: title: contains the control character '\\x07'",
    "deeply-nested": "papers/deeply-nested.yaml:9: venue: lists and mappings nested more than 20 levels deep",
    "doi-with-resolver": "papers/doi-with-resolver.yaml:12: doi: 'https://doi.org/10.1109/CVPR.2024.00001' "
                         "is not a DOI",
    "empty": "papers/empty.yaml:1: file is empty",
    "empty-authors": "papers/empty-authors.yaml:5: authors: needs at least one item",
    "facet-not-allowed": "papers/facet-not-allowed.yaml:19: attributes.scenario: facet 'scenario' is not used at "
                         "'prefilling/token-compression/attention-guided'; facets there: modality, signal, training",
    "facet-value-not-allowed": "papers/facet-value-not-allowed.yaml:17: attributes.modality: 'audio' is not "
                               "allowed at 'prefilling/token-compression/attention-guided'; choose one of: general, "
                               "image, streaming-video, text, video",
    "future-year": "papers/future-year.yaml:8: year: year 2999 is not plausible",
    "html-in-title": "papers/html-in-title.yaml:4: title: must be plain text: remove the HTML tag '<i>'",
    "id-not-file-name": "papers/id-not-file-name.yaml:2: id: 'another-name-2024' does not match the file name "
                        "'id-not-file-name.yaml'",
    "impossible-date": "papers/impossible-date.yaml:22: added: '2026-13-45' cannot be read (month must be in 1..12)",
    "impossible-year": "papers/impossible-year.yaml:8: year: year 1850 is not plausible",
    "javascript-url": "papers/javascript-url.yaml:12: code: 'javascript:alert(document.cookie)' is not a web address",
    "malformed-url": "papers/malformed-url.yaml:12: code: 'github.com/example/example' is not a web address",
    "missing-title": "papers/missing-title.yaml:1: title: is required but missing",
    "non-utf8": "papers/non-utf8.yaml:6: byte 0xe6 is not valid UTF-8",
    "placeholder-left": "papers/placeholder-left.yaml:19: summary: is still a placeholder; write one sentence",
    "preprint-without-link": "papers/preprint-without-link.yaml:10: venue_type: a preprint needs an 'arxiv' id",
    "python-object-tag": "papers/python-object-tag.yaml:9: venue: YAML tag '!!python/object/apply:os.system' "
                         "is not allowed",
    "repeated-author": "papers/repeated-author.yaml:5: authors: 'Ada Lovelace' is listed twice",
    "script-in-summary": "papers/script-in-summary.yaml:19: summary: must be plain text: remove the HTML tag "
                         "'<script>'",
    "summary-too-short": "papers/summary-too-short.yaml:19: summary: string should have at least 20 characters",
    "tab-indentation": "papers/tab-indentation.yaml:7: authors: tab character",
    "top-level-list": "papers/top-level-list.yaml:1: the file must be a mapping of fields ('title: ...'), not a list",
    "unclosed-quote": "papers/unclosed-quote.yaml:11: arxiv: YAML syntax error while parsing a block mapping: "
                      "did not find expected key at line 11 (is the quote on line 4 closed?)",
    "unknown-field": "papers/unknown-field.yaml:10: tittle: unknown field 'tittle'; did you mean 'title'?",
    "unknown-kind": "papers/unknown-kind.yaml:13: kind: input should be 'method', 'benchmark', 'model', 'system' or "
                    "'survey' (got 'technique')",
    "unknown-node": "papers/unknown-node.yaml:15: taxonomy.0: 'prefiling/token-compression/attention-guided' is not "
                    "a node; did you mean 'prefilling/token-compression/attention-guided'?",
    "unknown-source": "papers/unknown-source.yaml:21: sources.0: input should be 'figure-3'",
    "unquoted-arxiv": 'papers/unquoted-arxiv.yaml:11: arxiv: 2401.00010 is read as a number; put it in quotes: '
                      'arxiv: "2401.00010"',
    "url-without-host": "papers/url-without-host.yaml:12: code: 'http://example/' has no proper host name",
    "wrong-type-attributes": "papers/wrong-type-attributes.yaml:16: attributes: must be a mapping with one "
                             "'name: value' per line",
    "wrong-type-authors": "papers/wrong-type-authors.yaml:5: authors: must be a list, one item per line starting "
                          "with '- ' (got 'Ada Lovelace and Alan Turing')",
    "wrong-type-year": "papers/wrong-type-year.yaml:8: year: 'twenty twenty-four' is not a whole number; write it "
                       "like year: 2024",
    "yaml-syntax-error": "papers/yaml-syntax-error.yaml:7: authors: YAML syntax error while parsing a flow sequence",
    "internal-node": "papers/internal-node.yaml:15: taxonomy.0: 'prefilling/token-compression' has sub-nodes; "
                     "place the paper at the one that fits: prefilling/token-compression/diversity-guided",
    "model-alias": "papers/model-alias.yaml:19: models.0: 'LLaVA-v1.5-7B' is written 'LLaVA-1.5-7B' here",
    "unknown-benchmark": "papers/unknown-benchmark.yaml:19: benchmarks.1: 'MMBanch' is not in "
                         "taxonomy/vocabulary.yaml; did you mean 'MMBench'?",
    "name-case-of-title": "papers/name-case-of-title.yaml:3: name: 'EXAMPLE' is the title's own 'Example' in "
                          "another case; write name: Example",
    "unverified-new-entry": "papers/unverified-new-entry.yaml:21: sources: an entry the survey does not mention "
                            "needs 'verified_from'",
    "announced-after-added": "papers/announced-after-added.yaml:22: announced: 2026-12-01 is after added "
                             "(2026-11-21)",
    "duplicate-key": "papers/duplicate-key.yaml:10: title: appears twice; YAML keeps only the last one",
    "result-without-source": "papers/result-without-source.yaml:25: results.0.source: is required but missing",
    "result-unknown-benchmark": "papers/result-unknown-benchmark.yaml:29: results.0.scores.1.benchmark: 'MMBanch' "
                                "is not in taxonomy/vocabulary.yaml; did you mean 'MMBench'?",
    "result-out-of-range": "papers/result-out-of-range.yaml:29: results.0.scores.1: value 1721 is outside 0-100, "
                           "the range of metric 'accuracy'",
    "result-without-baseline": "papers/result-without-baseline.yaml:28: results.0.scores.0: GQA: 'baseline' is "
                               "missing",
    "result-unknown-reporter": "papers/result-unknown-reporter.yaml:30: results.0.reported_by: 'fastv-2042' is not "
                               "the id of a paper file; did you mean 'fastv-2024'?",
    # Duplicates of the valid fixture papers/fastv-2024.yaml: the later file in name order is the one reported.
    "duplicate-arxiv": "papers/fastv-2024.yaml:16: arxiv: '2403.06764' is already used by papers/duplicate-arxiv.yaml",
    "duplicate-doi": "papers/fastv-2024.yaml:17: doi: '10.1007/978-3-031-73004-7_2' is already used by "
                     "papers/duplicate-doi.yaml",
    "duplicate-title": "papers/fastv-2024.yaml:4: title: same title as papers/duplicate-title.yaml",
    "duplicate-id": "papers/fastv-2024.yaml:2: id: 'fastv-2024' is already used by papers/duplicate-id.yaml",
}
# duplicate-id.yaml also carries an id that is not its file name; every other file yields exactly one problem.
PROBLEM_COUNT = {"duplicate-id": 2}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def validate_with(repo: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    before = snapshot(repo)
    code = main(["--root", str(repo), "validate"])
    captured = capsys.readouterr()
    assert snapshot(repo) == before, "validate must not write anything"
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err.strip().splitlines()


def test_corpus_has_a_message_for_every_file() -> None:
    files = {p.stem for p in CORPUS.glob("*.yaml")}
    assert len(files) >= 30
    assert files == set(EXPECTED), "every file in tests/bad_papers needs its expected message here"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_paper_gets_its_own_message(name: str, tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(CORPUS / f"{name}.yaml", tiny_repo / "papers" / f"{name}.yaml")
    code, lines = validate_with(tiny_repo, capsys)
    count = PROBLEM_COUNT.get(name, 1)
    assert code == 1
    assert lines[-1] == f"{count} problem{'s' if count > 1 else ''} found"
    assert any(line.startswith(EXPECTED[name]) for line in lines[:-1]), "\n".join(lines)


def test_ten_megabyte_file_is_refused_before_parsing(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tiny_repo / "papers" / "huge.yaml"
    with big.open("w") as handle:
        handle.write("id: huge\ntitle: x\nsummary: >-\n")
        line = "  " + "lorem ipsum " * 8 + "\n"
        handle.write(line * (10_000_000 // len(line)))
    code, lines = validate_with(tiny_repo, capsys)
    assert code == 1
    assert lines[0].startswith("papers/huge.yaml: file is 10,") and "over the 1,000,000-byte limit" in lines[0]


def test_very_deep_nesting_cannot_crash_the_validator(tiny_repo: Path) -> None:
    # 200,000 levels of flow brackets (400 kB) overflow libyaml's recursive composer (a segfault, not an
    # exception), so this runs in a child process: a crash shows as a negative exit status.
    (tiny_repo / "papers" / "deep.yaml").write_text("id: deep\ntitle: " + "[" * 200_000 + "]" * 200_000 + "\n")
    result = subprocess.run([sys.executable, "-m", "tools", "--root", str(tiny_repo), "validate"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-500:]
    assert "papers/deep.yaml:2: title: lists and mappings nested more than 20 levels deep" in result.stderr


def test_near_duplicate_title_is_reported_but_not_fatal(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (CORPUS / "duplicate-title.yaml").read_text().replace(
        "1/2 tokens after layer 2", "1/2 tokens after layer two").replace("duplicate-title", "near-duplicate-title")
    (tiny_repo / "papers" / "near-duplicate-title.yaml").write_text(text)
    assert main(["--root", str(tiny_repo), "validate"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "2 papers valid"
    assert ("warning: papers/near-duplicate-title.yaml:4: title: nearly the same title as papers/fastv-2024.yaml"
            in captured.err)
