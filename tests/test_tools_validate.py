"""`python -m tools validate` and `schema` on the real data and on small repositories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools.cli import main
from tools.errors import DataError
from tools.repository import load_repository
from tools.schema import SCHEMA_FILE, paper_schema


def test_snapshot_validates(repo_root: Path) -> None:
    repository = load_repository(repo_root)
    assert len(repository.papers) == len(list((repo_root / "papers").glob("*.yaml")))
    assert [p.id for p in repository.papers] == sorted(p.id for p in repository.papers)
    assert all(repository.paths[p.id].stem == p.id for p in repository.papers)


def test_committed_schema_matches_models(repo_root: Path) -> None:
    committed = (repo_root / SCHEMA_FILE).read_text(encoding="utf-8")
    assert committed == paper_schema(), "taxonomy/paper.schema.json is stale: run `python -m tools schema`"


def test_schema_describes_every_paper_field() -> None:
    schema = json.loads(paper_schema())
    assert schema["additionalProperties"] is False
    assert {"id", "title", "authors", "taxonomy", "summary"} <= set(schema["required"])
    assert all(prop.get("description") for prop in schema["properties"].values())


def test_schema_check_flags_a_stale_file(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tiny_repo), "schema"]) == 0
    assert main(["--root", str(tiny_repo), "schema", "--check"]) == 0
    (tiny_repo / SCHEMA_FILE).write_text("{}\n", encoding="utf-8")
    assert main(["--root", str(tiny_repo), "schema", "--check"]) == 1
    assert "stale" in capsys.readouterr().out


def test_validate_reports_count_on_success(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tiny_repo), "validate"]) == 0
    assert capsys.readouterr().out.strip() == "1 papers valid"


def test_validate_names_file_line_field_and_suggests_node(tiny_repo: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    paper = tiny_repo / "papers" / "fastv-2024.yaml"
    paper.write_text(paper.read_text().replace("  - prefilling/token", "  - prefiling/token"))
    assert main(["--root", str(tiny_repo), "validate"]) == 1
    err = capsys.readouterr().err
    assert ("papers/fastv-2024.yaml:21: taxonomy.0: 'prefiling/token-compression/attention-guided' is not a node; "
            "did you mean 'prefilling/token-compression/attention-guided'?") in err


def test_load_repository_collects_every_problem(tiny_repo: Path) -> None:
    (tiny_repo / "papers" / "a.yaml").write_text("id: a\n")
    (tiny_repo / "papers" / "b.yaml").write_text("id: b\ntitle: [\n")
    with pytest.raises(DataError) as caught:
        load_repository(tiny_repo)
    paths = {p.path for p in caught.value.problems}
    assert paths == {"papers/a.yaml", "papers/b.yaml"}
    assert sum(p.path == "papers/a.yaml" for p in caught.value.problems) >= 5  # every missing required field


def test_near_duplicate_title_is_a_warning(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = (tiny_repo / "papers" / "fastv-2024.yaml").read_text()
    variant = (original.replace("id: fastv-2024", "id: fastv-preprint-2024")
               .replace('arxiv: "2403.06764"', 'arxiv: "2403.06765"')
               .replace("doi: 10.1007/978-3-031-73004-7_2\n", "")
               .replace("Plug-and-Play Inference", "Plug-and-Play Fast Inference"))
    (tiny_repo / "papers" / "fastv-preprint-2024.yaml").write_text(variant)
    assert main(["--root", str(tiny_repo), "validate"]) == 0
    captured = capsys.readouterr()
    assert "2 papers valid" in captured.out
    assert ("warning: papers/fastv-preprint-2024.yaml:4: title: nearly the same title as papers/fastv-2024.yaml"
            in captured.err)


def test_validate_changed_ignores_untouched_broken_files(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    (tiny_repo / "papers" / "broken.yaml").write_text("id: broken\n")
    subprocess.run(["git", "init", "-q"], cwd=tiny_repo, check=True)
    subprocess.run([*git, "add", "."], cwd=tiny_repo, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=tiny_repo, check=True)
    new = (tiny_repo / "papers" / "fastv-2024.yaml").read_text().replace("year: 2024", "year: 3024")
    (tiny_repo / "papers" / "fastv-2024.yaml").write_text(new)
    assert main(["--root", str(tiny_repo), "validate", "--changed", "HEAD"]) == 1
    err = capsys.readouterr().err
    assert "papers/fastv-2024.yaml:13: year:" in err and "broken.yaml" not in err
    subprocess.run(["git", "checkout", "-q", "--", "papers/fastv-2024.yaml"], cwd=tiny_repo, check=True)
    assert main(["--root", str(tiny_repo), "validate", "--changed", "HEAD"]) == 0


def test_every_verb_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from tools.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - the argparse registry
    assert {"validate", "schema", "new", "export-bibtex", "import-bibtex", "readme", "stats", "bench"} <= set(verbs)
    for verb in verbs:
        with pytest.raises(SystemExit) as exited:
            main([verb, "--help"])
        assert exited.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m tools {verb}")


def test_cli_runs_as_a_module(repo_root: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tools", "--help"], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "validate" in result.stdout


def test_comparisons_are_plain_text_but_tags_are_not() -> None:
    from pydantic import ValidationError

    from tools.models import Paper

    base = yaml.safe_load((Path(__file__).parent / "fixtures" / "fastv-2024.yaml").read_text(encoding="utf-8"))
    text = "Keeps a < b and c > d when pruning, and budgets of <= 64 tokens."
    assert Paper.model_validate({**base, "summary": text}).summary == text
    for markup in ("Prunes <b>visual</b> tokens after layer two.", "Prunes tokens <!-- hidden --> early on."):
        with pytest.raises(ValidationError, match="must be plain text: remove the HTML tag"):
            Paper.model_validate({**base, "summary": markup})
