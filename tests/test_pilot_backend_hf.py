"""The transformers backend on a tiny, randomly initialised Qwen2.5-VL built here from a config:
the studies' cache policies, observation, pruning and speculative decoding run through the real
architecture code (vision tower, multimodal RoPE, GQA decoder), with no download."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the transformers backend needs: pip install '.[hf]'")

from tiny_qwen import END, IMAGE, START, image_processor, tiny_qwen, token_types

from pilot_experiments.backends import Backend, BackendError
from pilot_experiments.backends.hf import HFBackend, HFInputs
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.studies.hybrid_kv import Compose, FullCache, Hybrid, LookM, MadaKV, Quantize, RetrievalLayerCache, SparseMM, observe
from pilot_experiments.studies.hybrid_kv.study import attended_visual
from pilot_experiments.studies.relaxed_spec.decoding import autoregressive, speculative
from pilot_experiments.studies.relaxed_spec.pruning import VisualPruning, text_to_visual_scores
from pilot_experiments.studies.relaxed_spec.rules import RandomRelaxation, StrictMatch

GRID = (1, 8, 12)  # (t, h, w) patches: 24 visual tokens after the 2 x 2 merge
NEW = 12


@pytest.fixture(scope="module")
def target():
    return HFBackend(tiny_qwen(0))


@pytest.fixture(scope="module")
def draft():
    return HFBackend(tiny_qwen(1))


@pytest.fixture(scope="module")
def prompt():
    """input_ids with the image placeholders expanded as the processor does, pixel patches, grid."""
    t, h, w = GRID
    pixels = torch.randn(t * h * w, 3 * 2 * 4 * 4, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, START] + [IMAGE] * (t * h * w // 4) + [END, 10, 11, 12, 13]])
    return ids, pixels, torch.tensor([GRID])


def greedy_reference(backend: HFBackend, prompt) -> list[int]:
    ids, pixels, grid = prompt
    out = backend.model.generate(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, **token_types(backend.model, ids, IMAGE),
                                 max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def prefilled(backend: HFBackend, prompt, *, need_attn: bool = False):
    inputs = backend.embed_prompt(*prompt)
    cache = backend.new_cache(1, capacity=inputs.length + NEW + 8)
    with backend.query_tap() as tap:
        out = backend.prefill(inputs, cache, need_attn=need_attn)
    return inputs, cache, out, tap


def decode_steps(backend: HFBackend, cache, first: int, steps: int = 4) -> torch.Tensor:
    token, logits = first, []
    for _ in range(steps):
        out = backend.decode(torch.tensor([[token]]), cache).logits[:, -1]
        logits.append(out)
        token = int(out.argmax())
    return torch.cat(logits)


def test_the_backend_satisfies_the_protocol(target):
    assert isinstance(target, Backend)
    assert (target.n_layers, target.n_heads, target.n_kv_heads, target.head_dim) == (3, 4, 2, 16)


def test_prompt_marks_each_image_token_visual_with_multimodal_positions(target, prompt):
    inputs = target.embed_prompt(*prompt)
    ids = prompt[0]
    assert isinstance(inputs, HFInputs)
    assert torch.equal(inputs.modality == VISUAL, ids == IMAGE)
    assert int((inputs.frame == 0).sum()) == 24 and bool((inputs.token_ids[ids == IMAGE] == -1).all())
    rope = inputs.rope_positions[0]
    visual = rope[(ids == IMAGE)[0]]
    assert visual[:, 1].max() - visual[:, 1].min() == 3 and visual[:, 2].max() - visual[:, 2].min() == 5  # 4 x 6 merged grid


def test_full_cache_and_strict_verification_reproduce_generate(target, draft, prompt):
    reference = greedy_reference(target, prompt)
    inputs, cache, out, tap = prefilled(target, prompt)
    FullCache().compress(cache, observe(tap, cache))
    _, draft_cache, _, _ = prefilled(draft, prompt)
    tokens, stats = speculative(target, draft, cache, draft_cache, out.logits[0, -1], inputs.length, StrictMatch(), 3, NEW, eos=-1)
    assert tokens == reference
    assert sum(stats.emitted) == NEW - 1  # the first token comes from the prefill


def test_autoregressive_decoding_reproduces_generate(target, prompt):
    inputs, cache, out, _ = prefilled(target, prompt)
    assert autoregressive(target, cache, out.logits[0, -1], inputs.length, NEW, eos=-1) == greedy_reference(target, prompt)


def test_a_draft_reading_a_pruned_prompt_keeps_strict_output_exact(target, draft, prompt):
    inputs, cache, out, _ = prefilled(target, prompt, need_attn=True)
    pruned = VisualPruning(0.75).apply(inputs, text_to_visual_scores(out.attn, inputs))
    assert int((pruned.modality == VISUAL).sum()) == 6 and pruned.rope_positions.shape[1] == pruned.length
    draft_cache = draft.new_cache(1, capacity=pruned.length + NEW + 8)
    draft.prefill(pruned, draft_cache)
    assert draft_cache.rope_delta == cache.rope_delta  # the kept tokens keep the target's positions
    tokens, _ = speculative(target, draft, cache, draft_cache, out.logits[0, -1], inputs.length, StrictMatch(), 4, NEW, eos=-1)
    assert tokens == greedy_reference(target, prompt)


def test_a_model_drafting_for_itself_is_accepted_in_full(target, prompt):
    inputs, cache, out, _ = prefilled(target, prompt)
    _, draft_cache, _, _ = prefilled(target, prompt)
    tokens, stats = speculative(target, target, cache, draft_cache, out.logits[0, -1], inputs.length, RandomRelaxation(0.5), 3, NEW, eos=-1)
    assert tokens == greedy_reference(target, prompt)
    assert stats.emitted[:-1] == [4] * (len(stats.emitted) - 1) and not stats.rejected


def test_prefill_attention_weights_equal_transformers_eager(target, prompt):
    inputs, _, out, _ = prefilled(target, prompt, need_attn=True)
    text = target.text_config
    previous, text._attn_implementation = text._attn_implementation, "eager"
    try:
        with torch.no_grad():
            eager = target.decoder(inputs_embeds=inputs.embeds, position_ids=inputs.rope_positions.permute(2, 0, 1), output_attentions=True).attentions
    finally:
        text._attn_implementation = previous
    assert eager is not None and len(eager) == len(out.attn)
    for ours, theirs in zip(out.attn, eager):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_observed_window_attention_equals_the_model_weights(target, prompt):
    _, cache, out, tap = prefilled(target, prompt, need_attn=True)
    obs = observe(tap, cache)
    assert obs.attention[0].shape[2] == 5  # </vision> and the four question tokens
    for ours, theirs in zip(obs.attention, out.attn):
        torch.testing.assert_close(ours, theirs[:, :, -5:], rtol=0, atol=1e-5)


def policies(budget: float, backend: HFBackend):
    scores = torch.rand(backend.n_layers, backend.n_kv_heads, generator=torch.Generator().manual_seed(0))
    return [LookM(budget), MadaKV(budget), SparseMM(budget, head_scores=scores), Hybrid(budget, chunk=4, dynamic_fraction=1.0)]


@pytest.mark.parametrize("compact", [False, True], ids=["masked", "compacted"])
def test_every_policy_attends_its_budget_through_the_real_architecture(target, prompt, compact):
    _, full, out, tap = prefilled(target, prompt)
    obs = observe(tap, full)
    first = int(out.logits[0, -1].argmax())
    for policy in policies(0.25, target):
        cache = copy.deepcopy(full)
        with tap:  # retrieval ranks chunks with each decode step's query
            policy.compress(cache, obs)
            if compact:
                cache.compact(reserve=8)
            logits = decode_steps(target, cache, first)
        assert bool(torch.isfinite(logits).all())
        if not isinstance(cache[0], RetrievalLayerCache):
            assert sum(attended_visual(layer) for layer in cache.layers) == policy.total_budget(obs), policy


def test_masked_and_compacted_caches_give_the_same_logits(target, prompt):
    _, full, out, tap = prefilled(target, prompt)
    obs = observe(tap, full)
    first = int(out.logits[0, -1].argmax())
    masked, packed = copy.deepcopy(full), copy.deepcopy(full)
    LookM(0.25).compress(masked, obs)
    LookM(0.25).compress(packed, obs)
    packed.compact(reserve=8)
    assert packed.bytes().resident < masked.bytes().resident
    torch.testing.assert_close(decode_steps(target, masked, first), decode_steps(target, packed, first), rtol=0, atol=1e-5)


def test_budget_one_and_int8_quantization_stay_close_to_the_full_cache(target, prompt):
    _, full, out, tap = prefilled(target, prompt)
    obs = observe(tap, full)
    first = int(out.logits[0, -1].argmax())
    reference = decode_steps(target, copy.deepcopy(full), first)
    kept = copy.deepcopy(full)
    LookM(1.0).compress(kept, obs)
    torch.testing.assert_close(decode_steps(target, kept, first), reference, rtol=0, atol=1e-5)
    quantized = copy.deepcopy(full)
    Compose((LookM(1.0), Quantize(8))).compress(quantized, obs)
    assert quantized.bytes().logical < full.bytes().logical
    torch.testing.assert_close(decode_steps(target, quantized, first), reference, rtol=0, atol=0.05)


def test_the_attention_refuses_to_run_outside_a_backend_call(target):
    from pilot_experiments.backends.hf import pilot_attention

    layer = target.decoder.layers[0].self_attn
    q = torch.zeros(1, 4, 1, 16)
    with pytest.raises(BackendError, match="only runs inside"):
        pilot_attention(layer, q, q[:, :2], q[:, :2], None)


def test_loading_a_missing_checkpoint_says_what_to_pass(tmp_path):
    with pytest.raises(BackendError, match="local directory or a .gguf"):
        HFBackend.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(BackendError, match="not a .gguf"):
        HFBackend.from_pretrained(tmp_path / "weights.bin")


def test_two_processed_images_get_their_own_frames_and_decode_like_generate(target):
    from PIL import Image

    processor = image_processor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=64 * 64)
    rng = torch.Generator().manual_seed(1)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=rng) * 255).byte().numpy()) for h, w in ((40, 56), (32, 32))]
    enc = processor(images=images, return_tensors="pt")
    counts = (enc["image_grid_thw"].prod(-1) // 4).tolist()
    ids = torch.tensor([[1, *(t for n in counts for t in [START, *[IMAGE] * n, END]), 10, 11]])
    inputs = target.embed_prompt(ids, enc["pixel_values"], enc["image_grid_thw"])
    assert [int((inputs.frame == f).sum()) for f in (0, 1)] == counts
    cache = target.new_cache(1, capacity=inputs.length + NEW)
    first = target.prefill(inputs, cache).logits[0, -1]
    ours = autoregressive(target, cache, first, inputs.length, NEW, eos=-1)
    expected = target.model.generate(input_ids=ids, pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
                                     **token_types(target.model, ids, IMAGE), max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    assert ours == expected[0, ids.shape[1]:].tolist()


def test_a_plain_causal_lm_decodes_like_generate():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                                   num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    backend = HFBackend(transformers.LlamaForCausalLM(cfg))
    ids = torch.tensor([[1, 17, 33, 5, 60, 8]])
    inputs = backend.embed_prompt(ids)
    assert bool((inputs.modality == 0).all()) and inputs.rope_positions is None
    cache = backend.new_cache(1, capacity=ids.shape[1] + NEW)
    ours = autoregressive(backend, cache, backend.prefill(inputs, cache).logits[0, -1], ids.shape[1], NEW, eos=-1)
    expected = backend.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    assert ours == expected[0, ids.shape[1]:].tolist()


def test_sliding_window_models_are_refused():
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    with pytest.raises(BackendError, match="sliding-window"):
        HFBackend(transformers.Qwen2ForCausalLM(cfg))


def test_a_saved_checkpoint_directory_loads_as_the_same_model(target, prompt, tmp_path):
    target.model.save_pretrained(tmp_path)
    loaded = HFBackend.from_pretrained(tmp_path)
    assert type(loaded.model) is type(target.model) and loaded.tokenizer is None
    inputs = target.embed_prompt(*prompt)
    logits = [b.prefill(inputs, b.new_cache(1, inputs.length)).logits for b in (target, loaded)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
