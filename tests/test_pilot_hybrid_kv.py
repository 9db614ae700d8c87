"""Hybrid-KV policies on the reference LVLM's cache: budgets, equivalences, retrieval, merging."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pilot_experiments import synthvis
from pilot_experiments.backends import ReferenceQueryTap
from pilot_experiments.backends.prompts import ReferencePrompter
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.model import config_for
from pilot_experiments.studies.hybrid_kv import (
    Compose,
    FullCache,
    Hybrid,
    LookM,
    MadaKV,
    PolicyError,
    Quantize,
    RetrievalLayerCache,
    SparseMM,
    observe,
    rank_chunks,
)
from pilot_experiments.studies.hybrid_kv.allocation import BudgetError, allocate
from pilot_experiments.studies.hybrid_kv.policies import merge_entries
from pilot_experiments.studies.hybrid_kv import study
from pilot_experiments.studies.hybrid_kv.study import answer, attended_visual

TOK = synthvis.Tokenizer()


@pytest.fixture(scope="module")
def prefilled(untrained_draft):
    """A prefilled cache for one SynthVis question (question only, no <ans>) and its observation."""
    ep = synthvis.image_episode("test", 0, 1, image_px=32)
    qa = ep.qas[0]
    inputs = untrained_draft.embed_prompt(ep.pixels[None], torch.tensor([ep.times]), torch.tensor([TOK.encode(qa.question)]))
    tap = ReferenceQueryTap(untrained_draft).__enter__()
    cache = untrained_draft.new_cache(1, capacity=inputs.length + 16)
    with torch.no_grad():
        untrained_draft.prefill(inputs, cache)
    yield ep, qa, cache, observe(tap, cache), tap
    tap.__exit__(None, None, None)


def policies(budget: float):
    cfg = config_for("draft", len(TOK))
    scores = torch.rand(cfg.lm_layers, cfg.lm_kv_heads, generator=torch.Generator().manual_seed(0))
    return [LookM(budget), LookM(budget, merge="pivotal"), MadaKV(budget), SparseMM(budget, head_scores=scores),
            Hybrid(budget, chunk=8), Hybrid(budget, chunk=8, dynamic_fraction=1.0)]


def compressed(prefilled, policy, compact: bool):
    _, _, cache, obs, _ = prefilled
    cache = copy.deepcopy(cache)
    policy.compress(cache, obs)
    if compact:
        cache.compact(reserve=16)
    return cache, obs


def decode(model, cache, steps: int = 3) -> torch.Tensor:
    token, logits = TOK.ans_id, []
    with torch.no_grad():
        for _ in range(steps):
            out = model.decode(torch.tensor([[token]]), cache).logits[:, -1]
            logits.append(out)
            token = int(out.argmax())
    return torch.cat(logits)


@pytest.mark.parametrize("compact", [False, True], ids=["masked", "compacted"])
@pytest.mark.parametrize("budget", [0.5, 0.2, 0.1])
def test_every_policy_attends_exactly_its_visual_budget(prefilled, budget, compact):
    for policy in policies(budget):
        cache, obs = compressed(prefilled, policy, compact)
        per_head = torch.stack([layer.attended_visual()[0] if isinstance(layer, RetrievalLayerCache) else
                                (layer.view().valid & (layer.view().modality == VISUAL))[0].sum(-1) for layer in cache.layers])
        assert torch.equal(per_head, policy.head_budgets(obs)), policy
        assert sum(attended_visual(layer) for layer in cache.layers) == policy.total_budget(obs)


@pytest.mark.parametrize("compact", [False, True], ids=["masked", "compacted"])
def test_hybrid_dynamic_heads_see_exactly_their_budget_at_a_decode_step(untrained_draft, prefilled, compact):
    policy = Hybrid(0.2, chunk=8, dynamic_fraction=1.0)
    cache, obs = compressed(prefilled, policy, compact)
    decode(untrained_draft, cache, steps=1)
    for layer, budgets in zip(cache.layers, policy.head_budgets(obs)):
        keys, _, mask = layer.read(1)  # the same query again: the same retrieval
        visible = torch.ones(keys.shape[1], layer.length, dtype=torch.bool) if mask is None else mask[0, :, 0, : layer.length] == 0
        visual = layer.view().modality[0] == VISUAL
        assert torch.equal((visible & visual).sum(-1), budgets)


def test_full_cache_output_equals_uncompressed_generation(untrained_draft, prefilled):
    ep, qa, cache, obs, _ = prefilled
    ours = answer(ReferencePrompter(untrained_draft), cache, obs, FullCache(), compact=True, max_new=12)
    inputs = untrained_draft.embed_prompt(ep.pixels[None], torch.tensor([ep.times]), torch.tensor([TOK.encode(qa.question) + [TOK.ans_id]]))
    assert ours.tokens == untrained_draft.generate(inputs, max_new_tokens=12)
    assert ours.visual_kept == 1.0 and ours.total_kept == 1.0


def test_question_agnostic_full_cache_answers_like_uncompressed_generation(untrained_draft, prefilled):
    """Prefilling the context, compressing nothing and then prefilling the question is the same as prefilling it all."""
    ep, qa, _, _, tap = prefilled
    prompter = ReferencePrompter(untrained_draft)
    inputs = prompter.prompt(ep, qa.question, with_answer_start=False)
    context, question = study.split_prompt(inputs)
    assert context.length + question.length == inputs.length
    assert int(context.modality[0, -1]) == VISUAL and (question.modality == VISUAL).sum() == 0
    cache = untrained_draft.new_cache(1, capacity=inputs.length + 16)
    with torch.no_grad():
        untrained_draft.prefill(context, cache)
    obs = observe(tap, cache, window=4)
    shrunk, _, visual_kept, _ = study.compressed(cache, obs, FullCache(), compact=True, reserve=question.length + 13)
    tokens, _, _, moved = study.respond(prompter, shrunk, question, 12)
    with_start = prompter.prompt(ep, qa.question)
    assert tokens == untrained_draft.generate(with_start, max_new_tokens=12) and visual_kept == 1.0 and moved == 0


def test_a_later_turn_continues_the_positions_after_the_first_answer(untrained_draft, prefilled):
    ep, qa, _, _, _ = prefilled
    prompter = ReferencePrompter(untrained_draft)
    _, question = study.split_prompt(prompter.prompt(ep, qa.question, with_answer_start=False))
    later = study.shifted(question, 100, prompter.backend, [TOK.eos_id])
    assert later.positions[0].tolist() == list(range(100, 101 + question.length))
    assert later.token_ids[0].tolist() == [TOK.eos_id] + question.token_ids[0].tolist()


def test_hybrid_counts_the_bytes_it_copies_back_from_the_offload_store(untrained_draft, prefilled):
    cache, _ = compressed(prefilled, Hybrid(0.2, chunk=8, dynamic_fraction=1.0), compact=True)
    layers = [layer for layer in cache.layers if isinstance(layer, RetrievalLayerCache)]
    assert layers and all(layer.moved_bytes == 0 for layer in layers)
    decode(untrained_draft, cache, steps=2)
    for layer in layers:  # every step copies each dynamic head's budget of retrieved entries, keys and values
        entries = int(layer.budgets[layer.dyn].sum()) * layer.batch
        assert layer.moved_bytes == 2 * entries * 2 * layer.head_dim * torch.finfo(layer.dtype).bits // 8


def test_full_cache_logits_equal_the_untouched_cache(untrained_draft, prefilled):
    reference = decode(untrained_draft, copy.deepcopy(prefilled[2]))
    cache, _ = compressed(prefilled, FullCache(), compact=True)
    torch.testing.assert_close(decode(untrained_draft, cache), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("index", range(6))
def test_masked_and_compacted_caches_give_the_same_logits(untrained_draft, prefilled, index):
    policy = policies(0.2)[index]
    masked, _ = compressed(prefilled, policy, compact=False)
    packed, _ = compressed(prefilled, policy, compact=True)
    torch.testing.assert_close(decode(untrained_draft, masked), decode(untrained_draft, packed), rtol=0, atol=1e-4)


def test_compaction_frees_memory_that_masking_keeps(prefilled):
    masked, _ = compressed(prefilled, LookM(0.1), compact=False)
    packed, _ = compressed(prefilled, LookM(0.1), compact=True)
    assert masked.bytes().resident == prefilled[2].bytes().resident
    per_slot = 2 * masked[0].kv_heads * masked[0].head_dim * 4  # keys + values, fp32
    widest = sum(int(layer.view().valid.sum(-1).max()) + 16 for layer in masked.layers)  # per-layer maximum + reserve
    assert packed.bytes().resident == widest * per_slot < masked.bytes().resident / 2


def test_budget_one_keeps_the_cache_identical_in_effect(untrained_draft, prefilled):
    reference = decode(untrained_draft, copy.deepcopy(prefilled[2]))
    for policy in policies(1.0):
        cache, _ = compressed(prefilled, policy, compact=True)
        torch.testing.assert_close(decode(untrained_draft, cache), reference, rtol=0, atol=1e-4)


def test_retrieval_ranks_chunks_by_query_dot_mean_key(untrained_draft, prefilled):
    policy = Hybrid(0.2, chunk=8, dynamic_fraction=1.0)
    cache, obs = compressed(prefilled, policy, compact=True)
    layer = cache.layers[1]
    decode(untrained_draft, cache, steps=1)
    q = layer.queries(1)  # (1, n_dyn, group, 1, d)
    chunks = layer.cold["keys"].view(1, len(layer.dyn), -1, 8, layer.head_dim)
    valid = layer.entry_valid.view(1, len(layer.dyn), -1, 8)
    mean = (chunks * valid.unsqueeze(-1)).sum(3) / valid.sum(-1, keepdim=True).clamp_min(1)
    brute = torch.einsum("bhgd,bhcd->bhc", q[:, :, :, 0], mean).masked_fill(valid.sum(-1) == 0, float("-inf"))
    order = rank_chunks(q, layer.mean_keys, layer.chunk_valid)
    assert torch.equal(order, torch.argsort(brute, dim=-1, descending=True, stable=True))
    # the working slots hold the first `budget` entries of the best chunks, in that order
    budget = int(layer.budgets[layer.dyn[0]])
    best = chunks[0, 0, order[0, 0]].flatten(0, 1)[valid[0, 0, order[0, 0]].flatten()][:budget]
    start = int(layer.work_start[0, 0])
    torch.testing.assert_close(layer.hot.keys[0, layer.dyn[0], start : start + budget], best)


def test_merged_entry_is_the_mean_of_its_members(untrained_draft, prefilled):
    cache = copy.deepcopy(prefilled[2])
    layer = cache.layers[0]
    original = layer.view().keys.clone()
    source, target = torch.tensor([[[5, 6], [7, 9]]]), torch.tensor([[[4, 4], [8, 8]]])
    merge_entries(layer, source, target, torch.ones_like(source, dtype=torch.bool))
    torch.testing.assert_close(layer.view().keys[0, 0, 4], original[0, 0, 4:7].mean(0))
    torch.testing.assert_close(layer.view().keys[0, 1, 8], original[0, 1, 7:10].mean(0))
    assert layer.view().count[0, 0, 4] == 3 and not layer.view().valid[0, 0, 5] and layer.view().valid[0, 0, 4]
    merge_entries(layer, torch.tensor([[[3], [3]]]), torch.tensor([[[4], [8]]]), torch.ones(1, 2, 1, dtype=torch.bool))
    torch.testing.assert_close(layer.view().keys[0, 0, 4], original[0, 0, 3:7].mean(0))  # still the exact mean of 4


def test_lookm_merging_accounts_for_every_visual_entry_once(prefilled):
    cache, obs = compressed(prefilled, LookM(0.2), compact=False)
    for layer in cache.layers:
        hot = layer.view()
        kept = hot.valid & obs.visual
        assert torch.equal((hot.count * kept).sum(-1), obs.visual.sum(-1))


def test_policies_are_deterministic(untrained_draft, prefilled):
    for policy in policies(0.2):
        a, _ = compressed(prefilled, policy, compact=True)
        b, _ = compressed(prefilled, policy, compact=True)
        assert torch.equal(decode(untrained_draft, a), decode(untrained_draft, b))
        for la, lb in zip(a.layers, b.layers):
            assert torch.equal(la.view().valid, lb.view().valid) and torch.equal(la.view().keys, lb.view().keys)


def test_composed_quantization_keeps_the_budget_and_shrinks_bytes(prefilled):
    pruned, obs = compressed(prefilled, LookM(0.5), compact=True)
    both, _ = compressed(prefilled, Compose((LookM(0.5), Quantize(4))), compact=True)
    assert sum(attended_visual(layer) for layer in both.layers) == LookM(0.5).total_budget(obs)
    assert both.bytes().resident < 0.6 * pruned.bytes().resident


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_policies_reject_budgets_outside_the_unit_interval(bad):
    with pytest.raises(PolicyError, match="budget"):
        LookM(bad)


def test_sparsemm_needs_scores_shaped_like_the_model(prefilled):
    with pytest.raises(PolicyError, match="head_scores"):
        SparseMM(0.2, head_scores=torch.ones(5, 5)).compress(copy.deepcopy(prefilled[2]), prefilled[3])


def test_observed_window_attention_equals_the_model_weights(untrained_draft, prefilled):
    ep, qa, _, obs, tap = prefilled
    inputs = untrained_draft.embed_prompt(ep.pixels[None], torch.tensor([ep.times]), torch.tensor([TOK.encode(qa.question)]))
    with torch.no_grad():
        weights = untrained_draft(inputs, need_attn=True).attn
    w = obs.attention[0].shape[2]
    for ours, theirs in zip(obs.attention, weights):
        torch.testing.assert_close(ours, theirs[:, :, -w:], rtol=0, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 50)), min_size=1, max_size=12), st.floats(0, 1))
def test_allocation_sums_exactly_and_respects_caps(holders, fraction):
    weights = torch.tensor([w for w, _ in holders], dtype=torch.float64)
    caps = torch.tensor([c for _, c in holders])
    total = int(fraction * int(caps.sum()))
    out = allocate(total, weights, caps)
    assert int(out.sum()) == total and bool((out <= caps).all()) and bool((out >= 0).all())


def test_allocation_refuses_more_than_exists():
    with pytest.raises(BudgetError):
        allocate(11, torch.ones(2), torch.tensor([5, 5]))


def test_lookm_merges_block_by_block_into_the_same_targets(prefilled, monkeypatch):
    """Evicted entries are compared with the kept ones a block at a time (no length x length matrix); the
    block size changes nothing."""
    from pilot_experiments.studies.hybrid_kv import policies as lookm_module

    whole, _ = compressed(prefilled, LookM(0.2), compact=False)
    monkeypatch.setattr(lookm_module, "MERGE_BLOCK", 3)
    blocks, _ = compressed(prefilled, LookM(0.2), compact=False)
    for a, b in zip(whole.layers, blocks.layers):
        assert torch.equal(a.view().keys, b.view().keys) and torch.equal(a.view().valid, b.view().valid)
