"""`readme` (generated paper tables in README.md) and `stats`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.cli import main
from tools.errors import UsageError
from tools.repository import load_repository
from tools.readme import END, GENERATED, START, render_readme
from tools.stats import compute_stats


def test_readme_tables_are_current(repo_root: Path) -> None:
    current = (repo_root / "README.md").read_text(encoding="utf-8")
    assert render_readme(current, load_repository(repo_root)) == current, \
        "README.md is stale: run `python -m tools readme`"


def test_readme_says_the_tables_are_generated(repo_root: Path) -> None:
    current = (repo_root / "README.md").read_text(encoding="utf-8")
    assert current.split(START, 1)[1].lstrip("\n").startswith(GENERATED)


def test_readme_lists_each_paper_under_each_of_its_nodes(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_repo / "README.md").write_text(f"# Title\n\nIntro.\n\n{START}\nstale\n{END}\n\nAfter.\n")
    paper = tiny_repo / "papers" / "fastv-2024.yaml"
    paper.write_text(paper.read_text().replace(
        "  - prefilling/token-compression/attention-guided\n",
        "  - prefilling/token-compression/attention-guided\n  - decoding/kv-cache-compression/token-level\n")
        .replace("  signal: attention\n", ""))
    assert main(["--root", str(tiny_repo), "readme", "--check"]) == 1
    assert main(["--root", str(tiny_repo), "readme"]) == 0
    text = (tiny_repo / "README.md").read_text()
    assert text.startswith("# Title\n\nIntro.\n\n") and text.endswith(f"{END}\n\nAfter.\n") and "stale" not in text
    assert "### Prefilling stage › Prefilling-side token compression › Attention-guided" in text
    assert "### Decoding stage › KV cache compression › Token-level" in text
    row = ("| **FastV**: An Image Is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large "
           "Vision-Language Models | ECCV 2024 | [arXiv](https://arxiv.org/abs/2403.06764) "
           "[DOI](https://doi.org/10.1007/978-3-031-73004-7_2) [code](https://github.com/pkunlp-icler/FastV) |")
    assert text.count(row) == 2
    assert main(["--root", str(tiny_repo), "readme", "--check"]) == 0


def test_readme_escapes_markdown_in_titles(tiny_repo: Path) -> None:
    (tiny_repo / "README.md").write_text(f"{START}\n{END}\n")
    paper = tiny_repo / "papers" / "fastv-2024.yaml"
    paper.write_text(paper.read_text().replace("1/2 Tokens", "1|2 *Tokens* [x]"))
    main(["--root", str(tiny_repo), "readme"])
    assert r"1\|2 \*Tokens\* \[x\]" in (tiny_repo / "README.md").read_text()


def test_readme_without_markers_is_refused(tiny_repo: Path) -> None:
    with pytest.raises(UsageError, match="papers:start"):
        render_readme("# no markers\n", load_repository(tiny_repo))


def test_stats_count_every_section(repo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = load_repository(repo_root)
    stats = compute_stats(repository)
    total = len(repository.papers)
    assert stats["total"]["papers"] == total
    for section in ("stage", "kind", "year", "venue", "venue_type", "code"):
        assert sum(stats[section].values()) == total, section
    assert sum(stats["node"].values()) == sum(len(p.taxonomy) for p in repository.papers)
    assert main(["--root", str(repo_root), "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["papers"] == total


def test_stats_table_output(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tiny_repo), "stats"]) == 0
    out = capsys.readouterr().out
    assert "prefilling/token-compression/attention-guided" in out and "modality=general" in out
