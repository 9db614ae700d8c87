"""lmms-eval with our model: the synthvis_qa task, a tiny random Qwen2.5-VL under HybridKV, scores and efficiency
figures side by side. Runs where the lmms extra installs (`pip install -e '.[hf,kvpress,lmms]'`, see the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval", reason="the lmms-eval model needs: pip install -e '.[hf,kvpress,lmms]' (see the README)")
pytest.importorskip("kvpress", reason="the lmms-eval model runs our presses: pip install -e '.[kvpress]'")

from tiny_qwen import save_tiny_checkpoint  # noqa: E402

from pilot_experiments.backends.base import BackendError  # noqa: E402
from pilot_experiments.lmms.model import LmmsError, PressedVLM  # noqa: E402
from pilot_experiments.lmms.task import build_task  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen")


@pytest.mark.slow
def test_lmms_eval_scores_the_task_and_the_model_logs_kv_bytes_and_latency(checkpoint, tmp_path):
    task = build_task(tmp_path / "task", episodes=3, scale=1)
    out, log = tmp_path / "out", tmp_path / "out" / "efficiency.json"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    args = f"pretrained={checkpoint},press=hybridkv,budget=0.5,max_new_tokens=4,efficiency_log={log}"
    done = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "efficient_lvlm", "--model_args", args, "--tasks",
                           "synthvis_qa", "--include_path", str(task.parent), "--output_path", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in out.rglob("*_results.json")]
    assert results and "exact_match,none" in results[0]["results"]["synthvis_qa"]
    figures = json.loads(log.read_text())
    assert figures["summary"]["requests"] == 3 and figures["summary"]["press"] == "hybridkv"
    for request in figures["requests"]:
        assert 0 < request["context_attended_pct"] < 100  # half the picture's entries, all the text
        assert request["kv_bytes"] > 0 and request["ttft_ms"] > 0


def test_the_model_attends_less_of_the_picture_under_a_press(checkpoint):
    from PIL import Image

    picture = [Image.new("RGB", (64, 64), (200, 30, 30))]
    full = PressedVLM(pretrained=str(checkpoint)).answer(picture, "What colour is it?", 3)[1]
    pressed = PressedVLM(pretrained=str(checkpoint), press="madakv", budget=0.25).answer(picture, "What colour is it?", 3)[1]
    assert full["context_attended_pct"] == 100
    assert pressed["kv_bytes"] < full["kv_bytes"]


@pytest.mark.parametrize("kwargs, message", [
    ({"press": "h2o"}, "press=h2o: unknown; choose none or one of snapkv"),
    ({"press": "expected-attention"}, "press=expected-attention cannot run on Qwen2.5-VL"),
    ({"press": "hybridkv", "budget": "1.5"}, "budget=1.5 must lie in (0, 1]"),
    ({"rule": "lenient"}, "rule=lenient: unknown; choose none or one of strict"),
    ({"rule": "strict", "press": "snapkv"}, "press=snapkv and rule=strict: choose one"),
])
def test_bad_model_arguments_are_refused_with_the_fix(checkpoint, kwargs, message):
    with pytest.raises(LmmsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        PressedVLM(pretrained=str(checkpoint), **kwargs)


def test_a_directory_without_weights_is_refused(tmp_path):
    with pytest.raises(BackendError, match="holds no config.json or no weights"):
        PressedVLM(pretrained=str(tmp_path))


@pytest.mark.parametrize("rule", ["strict", "function-word"])
def test_relaxed_verification_answers_and_logs_tokens_per_target_pass(checkpoint, rule):
    from PIL import Image

    picture = [Image.new("RGB", (64, 64), (30, 200, 30))]
    model = PressedVLM(pretrained=str(checkpoint), rule=rule, gamma=3, draft_keep=0.25)
    text, figures = model.answer_speculatively(picture, "What colour is it?", 6)
    assert isinstance(text, str) and 1 <= figures["tokens"] <= 6
    assert 1.0 <= figures["tokens_per_target_pass"] <= 4.0  # at most gamma drafted tokens plus the target's own
    if rule == "strict":  # strict verification with greedy drafts gives the target's own greedy answer
        plain = PressedVLM(pretrained=str(checkpoint)).answer(picture, "What colour is it?", 6)[0]
        assert text == plain
