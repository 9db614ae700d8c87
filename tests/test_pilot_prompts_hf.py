"""SynthVis questions put to a real architecture: a tiny, randomly initialised Qwen2.5-VL with a
word-level tokenizer, a chat template and Qwen's own image processor (tests/tiny_qwen.py, no download).
The chat prompter's prompts run through the vision tower and multimodal RoPE, the studies' answer
loop reproduces `generate()`, and `hybrid-kv` and `relaxed-spec` run end to end with `--model PATH`."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the transformers backend needs: pip install '.[hf]'")

from tiny_qwen import (
    TEMPLATE,
    save_tiny_checkpoint,
    tiny_chat_prompter,
    tiny_image_processor,
    tiny_tokenizer,
    token_types,
)

from pilot_experiments import train
from pilot_experiments.__main__ import main
from pilot_experiments.backends import prompts
from pilot_experiments.backends.hf import HFBackend
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.studies.hybrid_kv import FullCache, observe
from pilot_experiments.studies.hybrid_kv.study import answer

SMOKE = train.train_config("smoke")


@pytest.fixture(scope="module")
def chat():
    return tiny_chat_prompter()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny model, tokenizer and image processor saved as a checkpoint directory."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen")


def test_one_visual_token_per_synthvis_patch_for_images_and_video_frames(chat):
    image = train.family_episode("image", "test", 0, 0, SMOKE)
    inputs = chat.prompt(image, image.qas[1].question)
    assert int((inputs.modality == VISUAL).sum()) == image.scenes[0].grid ** 2
    video = train.family_episode("video", "test", 0, 0, train.train_config("cpu"))
    inputs = chat.prompt(video, video.qas[0].question)
    visual = inputs.modality[0] == VISUAL
    assert int(visual.sum()) == len(video.pixels) * video.scenes[0].grid ** 2
    assert inputs.frame[0][visual].unique().tolist() == list(range(len(video.pixels)))
    assert inputs.rope_positions is not None and inputs.rope_positions[0, -1, 0] < inputs.length - 1  # images pack RoPE positions


def test_the_prompt_ends_with_the_answer_start_unless_left_off(chat):
    ep = train.family_episode("image", "test", 0, 1, SMOKE)
    full = chat.encode(ep, ep.qas[0].question)["input_ids"][0]
    short = chat.encode(ep, ep.qas[0].question, with_answer_start=False)["input_ids"][0]
    assert full[-1] == chat.answer_start and torch.equal(full[:-1], short)
    words = chat.tokenizer.decode(full)
    assert "describe every object" in words and "<|im_start|> assistant" in words


def test_answering_under_the_full_cache_reproduces_generate(chat):
    ep = train.family_episode("image", "test", 0, 2, SMOKE)
    question = ep.qas[1].question
    inputs = chat.prompt(ep, question, with_answer_start=False)
    cache = chat.backend.new_cache(1, capacity=inputs.length + 16)
    with chat.backend.query_tap() as tap:
        chat.backend.prefill(inputs, cache)
        ours = answer(chat, cache, observe(tap, cache), FullCache(), compact=True, max_new=10).tokens
    enc = chat.encode(ep, question)
    expected = chat.backend.model.generate(**enc, **token_types(chat.backend.model, enc["input_ids"], chat.backend.image_token_id),
                                           max_new_tokens=10, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
    if chat.eos in expected:
        expected = expected[: expected.index(chat.eos)]
    assert ours == expected


def test_class_masks_follow_english_word_classes(chat):
    content, special = chat.class_masks()
    ids = chat.tokenizer.convert_tokens_to_ids(["red", "square", "the", "of", "<|im_end|>"])
    assert content[ids].tolist() == [True, True, False, False, False]
    assert special[ids].tolist() == [False, False, False, False, True]


def test_a_text_only_checkpoint_is_refused_for_synthvis_questions():
    tok = tiny_tokenizer()
    lm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                                num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(prompts.BackendError, match="Qwen2.5-VL"):
        prompts.ChatPrompter(HFBackend(lm, tok), tiny_image_processor())


def test_hybrid_kv_runs_on_a_checkpoint_directory(checkpoint, tmp_path):
    assert main(["hybrid-kv", "--preset", "smoke", "--model", str(checkpoint), "--results-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "hybrid-kv-tiny-qwen" / "smoke-cpu.json").read_text())
    results = payload["metrics"]["results"]
    assert payload["metrics"]["model"] == "tiny-qwen" and payload["config"]["model"] == str(checkpoint)
    assert results["FullCache@1.0"]["agreement"] == 1.0
    for method in ("LookM", "MadaKV", "SparseMM", "Hybrid"):
        assert results[f"{method}@0.2"]["visual_kept"] <= 0.25
    assert "--model" in payload["notes"]


@pytest.mark.parametrize("own_draft", [True, False])
def test_relaxed_spec_runs_on_a_checkpoint_directory_and_strict_is_exact(checkpoint, tmp_path, own_draft):
    draft = [] if own_draft else ["--draft", str(checkpoint)]
    assert main(["relaxed-spec", "--preset", "smoke", "--model", str(checkpoint), *draft, "--results-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "relaxed-spec-tiny-qwen" / "smoke-cpu.json").read_text())
    assert payload["metrics"]["models"]["draft"] == ("tiny-qwen (its own weights)" if own_draft else "tiny-qwen")
    rows = payload["rows"]
    assert {r["rule"] for r in rows} == set(payload["config"]["rules"])
    for r in rows:
        assert 1.0 <= r["accepted_len"] <= r["gamma"] + 1
        if r["rule"] == "strict":
            assert r["same_as_ar"] == 1.0
    assert payload["metrics"]["visual_tokens_per_image"] == SMOKE.image_px // 4 * (SMOKE.image_px // 4)


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    assert main(["hybrid-kv", "--preset", "smoke", "--model", str(missing), "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no checkpoint at {missing}; pass a local directory or a .gguf file"
    assert not (tmp_path / "hybrid-kv-no-such-checkpoint").exists()


def test_a_chat_template_kept_beside_the_processor_is_used(tmp_path):
    path = tmp_path / "template-in-processor"
    tok = tiny_tokenizer()
    tok.chat_template = None
    save_tiny_checkpoint(path, tok)
    (path / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    chat = prompts.ChatPrompter.from_pretrained(path)
    ep = train.family_episode("image", "test", 0, 0, SMOKE)
    assert chat.tokenizer.decode(chat.encode(ep, ep.qas[1].question)["input_ids"][0]).endswith("<|im_end|> <|im_start|> assistant")
