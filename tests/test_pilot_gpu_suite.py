"""`gpu-suite`: the dry run lists every GPU run within 30 minutes of limits; bad checkpoints are refused in one line."""

from __future__ import annotations

import pytest
import torch

from pilot_experiments.__main__ import main
from pilot_experiments.gpu_suite import SUITE_MINUTES, runs


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "qwen"
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_the_dry_run_lists_every_run_on_the_checkpoint_and_writes_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["gpu-suite", "--model", str(checkpoint), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for name in ("hybrid-kv", "relaxed-spec", "streaming", "serving", "kvpress comparison", "lmms-eval sample"):
        assert f"| {name} |" in printed
    assert f"7 runs, at most {SUITE_MINUTES} minutes in all" in printed
    assert not out.exists()


def test_every_run_writes_under_out_and_the_limits_fit_the_suite(checkpoint, tmp_path):
    suite = runs(checkpoint, tmp_path / "out")
    assert sum(r.minutes for r in suite) <= SUITE_MINUTES
    for r in suite:
        assert any(str(tmp_path / "out") in part for part in r.argv), r.name
    studies = [r for r in suite if "--preset" in r.argv and r.name != "serving"]
    assert {r.argv[r.argv.index("--preset") + 1] for r in studies} == {"gpu"}
    assert all(str(checkpoint) in r.argv for r in studies)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "missing: pass a local Qwen2.5-VL checkpoint directory"),
    (lambda p: p, "holds no config.json or no weights (*.safetensors); download the checkpoint into it first"),
])
def test_a_checkpoint_directory_without_weights_is_refused_in_one_line(tmp_path, capsys, make, message):
    assert main(["gpu-suite", "--model", str(make(tmp_path)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_running_it_without_a_gpu_is_refused(checkpoint, capsys):
    assert main(["gpu-suite", "--model", str(checkpoint)]) == 2
    assert "needs a CUDA device; --dry-run lists the runs without one" in capsys.readouterr().err
