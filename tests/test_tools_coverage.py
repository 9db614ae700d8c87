"""`coverage`: each id of another list is a paper, a declined candidate, or reported as missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.cli import main


def declare(repo: Path, *entries: tuple[str, str]) -> None:
    lines = ["declined:"] + [f'  - arxiv: "{arxiv}"\n    reason: "{reason}"' for arxiv, reason in entries]
    (repo / "taxonomy" / "declined.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_tsv_ids_are_split_into_papers_declined_and_missing(tiny_repo: Path, capsys) -> None:
    declare(tiny_repo, ("2501.00002", "off scope: text-to-image diffusion"))
    listing = tiny_repo / "peer.tsv"
    listing.write_text("arxiv_id\ttitle\n2403.06764\tFastV\n2501.00002\tA diffusion model\n"
                       "2502.00003\tSomething new 2502.00009\n", encoding="utf-8")
    assert main(["--root", str(tiny_repo), "coverage", str(listing)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 arXiv ids listed: 1 in papers/, 1 declined, 1 unaccounted for"
    assert out[1:] == ["missing: 2502.00003 https://arxiv.org/abs/2502.00003"]


def test_markdown_links_are_read_and_json_reports_each_group(tiny_repo: Path, capsys) -> None:
    listing = tiny_repo / "awesome.md"
    listing.write_text("- [FastV](https://arxiv.org/abs/2403.06764v2)\n- [X](https://arxiv.org/pdf/2502.00003)\n"
                       "- see arXiv:2502.00003 again; 1234.5678 is a phone number\n", encoding="utf-8")
    assert main(["--root", str(tiny_repo), "coverage", "--json", str(listing)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result == {"listed": 2, "papers": {"2403.06764": "fastv-2024"}, "declined": {}, "recheck": [],
                      "missing": ["2502.00003"]}


def test_everything_accounted_for_exits_zero(tiny_repo: Path, capsys) -> None:
    declare(tiny_repo, ("2502.00003", "duplicate of papers/fastv-2024.yaml"))
    listing = tiny_repo / "peer.csv"
    listing.write_text("2403.06764,FastV\n2502.00003,Other\n", encoding="utf-8")
    assert main(["--root", str(tiny_repo), "coverage", str(listing)]) == 0
    assert "0 unaccounted for" in capsys.readouterr().out


def test_an_id_declined_until_a_source_appears_is_accounted_for_but_listed_apart(tiny_repo: Path, capsys) -> None:
    (tiny_repo / "taxonomy" / "declined.yaml").write_text(
        'declined:\n  - arxiv: "2502.00003"\n    reason: "in scope, but no public page shows the authors"\n'
        '    recheck: true\n', encoding="utf-8")
    listing = tiny_repo / "peer.tsv"
    listing.write_text("2403.06764\tFastV\n2502.00003\tUnverified\n", encoding="utf-8")
    assert main(["--root", str(tiny_repo), "coverage", str(listing)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("2 arXiv ids listed: 1 in papers/, 1 declined (1 to recheck: no public page shows their facts "
                      "yet), 0 unaccounted for")
    assert out[1] == ("recheck: 2502.00003 https://arxiv.org/abs/2502.00003 (in scope, but no public page shows the "
                      "authors)")


@pytest.mark.parametrize("content", ["no ids at all\n", "title\tauthors\n"])
def test_a_list_without_ids_is_a_clear_error(tiny_repo: Path, capsys, content: str) -> None:
    listing = tiny_repo / "empty.tsv"
    listing.write_text(content, encoding="utf-8")
    assert main(["--root", str(tiny_repo), "coverage", str(listing)]) == 1
    assert "error: no arXiv ids found in" in capsys.readouterr().err


def test_a_declined_id_that_is_also_a_paper_fails_validation(tiny_repo: Path, capsys) -> None:
    declare(tiny_repo, ("2403.06764", "off scope: decided against it"))
    assert main(["--root", str(tiny_repo), "validate"]) == 1
    err = capsys.readouterr().err
    assert "papers/fastv-2024.yaml:16: arxiv: '2403.06764' is also in taxonomy/declined.yaml" in err


def test_a_declined_entry_without_reason_names_the_field(tiny_repo: Path, capsys) -> None:
    (tiny_repo / "taxonomy" / "declined.yaml").write_text('declined:\n  - arxiv: "2502.00003"\n', encoding="utf-8")
    assert main(["--root", str(tiny_repo), "validate"]) == 1
    assert "taxonomy/declined.yaml:2: declined.0.reason: is required but missing" in capsys.readouterr().err
