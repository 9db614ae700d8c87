"""The prompt layer without transformers: the reference prompter's layout, and how a chat
model's free text is read back as SynthVis words."""

from __future__ import annotations

import pytest
import torch

from pilot_experiments import synthvis, train
from pilot_experiments.__main__ import main
from pilot_experiments.backends import prompts
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.model import LVLM, config_for

TOK = synthvis.Tokenizer()
SMOKE = train.train_config("smoke")


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return prompts.ReferencePrompter(LVLM(config_for("draft", len(TOK))).eval())


@pytest.mark.parametrize(("text", "words"), [
    ("Red.", ["red"]),
    ("There are 2 squares.", ["there", "are", "two", "squares"]),
    ("second", ["second"]),
    ("A small red solid square at the top left and a large blue striped circle at the bottom right.",
     "a small red solid square at the top left and a large blue striped circle at the bottom right".split()),
    ("The purple circle, then the cross.", ["the", "purple", "circle", ",", "then", "the", "cross"]),
])
def test_free_text_is_read_as_synthvis_words(text, words):
    assert prompts.answer_words(text) == words


def test_a_template_caption_in_free_text_scores_like_the_reference_caption():
    scene = train.family_episode("image", "test", 0, 3, train.train_config("cpu")).scenes[0]
    truth = synthvis.caption_words(scene)
    spoken = " ".join(truth).replace(" .", ".").capitalize()
    assert train.caption_f1(prompts.answer_words(spoken), truth) == 1.0


def test_questions_become_requests_with_their_answer_format():
    assert prompts.question_text(("what", "colour", "is", "the", "square", "?"), video=False) == f"What colour is the square? {prompts.ONE_WORD}"
    assert prompts.question_text(prompts.CAPTION_QUESTION, video=False) == prompts.CAPTION_INSTRUCTION
    video = train.family_episode("video", "test", 0, 0, train.train_config("cpu"))
    assert prompts.question_text(video.qas[0].question, video=True).startswith(prompts.VIDEO_PREFACE)


def test_the_reference_prompter_lays_out_what_training_saw(reference):
    ep = train.family_episode("image", "test", 0, 0, SMOKE)
    question = ep.qas[1].question
    ours = reference.prompt(ep, question)
    theirs = train.prompt_inputs(reference.model, ep, question, TOK)
    assert torch.equal(ours.embeds, theirs.embeds) and torch.equal(ours.modality, theirs.modality)
    short = reference.prompt(ep, question, with_answer_start=False)
    assert short.length == ours.length - 1 and int(ours.token_ids[0, -1]) == reference.answer_start == TOK.ans_id
    assert int((ours.modality == VISUAL).sum()) == ep.scenes[0].grid ** 2


def test_the_reference_masks_are_the_tokenizer_word_classes(reference):
    content, special = reference.class_masks()
    assert content[TOK.ids["red"]] and not content[TOK.ids["the"]] and special[TOK.eos_id]
    assert reference.words(TOK.encode(("a", "red", "square"))) == ["a", "red", "square"]


def test_a_draft_without_a_model_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["relaxed-spec", "--preset", "smoke", "--draft", str(tmp_path), "--results-dir", str(tmp_path)]) == 2
    assert "--draft needs --model" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
