"""Our policies as kvpress presses, on a tiny random Llama: what they keep, what they merge, and that nothing
changes at no compression. Runs where the kvpress extra installs (`pip install -e '.[kvpress]'`)."""

from __future__ import annotations

import pytest
import torch

kvpress = pytest.importorskip("kvpress", reason="the presses need: pip install -e '.[kvpress]'")
transformers = pytest.importorskip("transformers")

from kvpress.utils import compute_n_kept  # noqa: E402

from tiny_qwen import END, IMAGE, START, tiny_qwen  # noqa: E402

from pilot_experiments.presses import LookMPress, SparseMMPress, merge_evicted  # noqa: E402

PROMPT = 100


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return transformers.LlamaForCausalLM(config).eval()


def prefill(model, ids, press=None):
    cache = transformers.DynamicCache()
    with torch.no_grad():
        if press is None:
            model(ids, past_key_values=cache, use_cache=True)
        else:
            with press(model):
                model(ids, past_key_values=cache, use_cache=True)
    return cache


def next_logits(model, cache, token=5):
    with torch.no_grad():
        return model(torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[0, -1]


def prompt_ids():
    return torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(1))


def test_no_compression_leaves_the_logits_exactly_as_they_were(model):
    ids = prompt_ids()
    plain = next_logits(model, prefill(model, ids))
    pressed = next_logits(model, prefill(model, ids, LookMPress(compression_ratio=0.0, window_size=8)))
    assert torch.equal(plain, pressed)


@pytest.mark.parametrize("merge", ["average", "pivotal", "none"])
def test_each_layer_keeps_the_budget(model, merge):
    cache = prefill(model, prompt_ids(), LookMPress(compression_ratio=0.75, window_size=8, merge=merge))
    kept = compute_n_kept(PROMPT, 0.75)
    assert kept == 25
    assert [layer.keys.shape[2] for layer in cache.layers] == [kept, kept]
    assert [layer.values.shape[2] for layer in cache.layers] == [kept, kept]


def test_text_entries_are_kept_untouched_and_images_merge_among_themselves(model):
    ids = prompt_ids()
    visual = torch.zeros(1, PROMPT, dtype=torch.bool)
    visual[0, 10:70] = True  # 60 image tokens amid 40 text tokens
    full = prefill(model, ids)
    cache = prefill(model, ids, LookMPress(compression_ratio=0.5, window_size=8, visual=visual))
    for layer, whole in zip(cache.layers, full.layers):
        assert layer.keys.shape[2] == 50  # 40 text + 10 image entries
        for head in range(layer.keys.shape[1]):
            text_keys = whole.keys[0, head, ~visual[0]]
            # every text key is still there, bit for bit (image entries only merge into image entries)
            matches = (layer.keys[0, head][None] == text_keys[:, None]).all(-1).any(-1)
            assert bool(matches.all())


def test_average_merge_makes_a_kept_entry_the_mean_of_itself_and_its_sources():
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [1.0, 0.2]]]])
    values = torch.arange(10.0).view(1, 1, 5, 2)
    kept, evicted = torch.tensor([[[0, 1]]]), torch.tensor([[[2, 3, 4]]])
    mergeable = torch.ones(1, 1, 5, dtype=torch.bool)
    k, v = merge_evicted(keys, values, kept, evicted, mergeable)
    torch.testing.assert_close(k[0, 0, 0], (keys[0, 0, 0] + keys[0, 0, 2] + keys[0, 0, 4]) / 3)  # 2 and 4 lean to 0
    torch.testing.assert_close(v[0, 0, 1], (values[0, 0, 1] + values[0, 0, 3]) / 2)  # 3 leans to 1
    k, v = merge_evicted(keys, values, kept, evicted, mergeable, pivotal=True)
    torch.testing.assert_close(v[0, 0, 0], 0.5 * values[0, 0, 0] + 0.25 * (values[0, 0, 2] + values[0, 0, 4]))
    blocked = mergeable.clone()
    blocked[0, 0, 4] = False  # not mergeable: kept out of every sum
    k, _ = merge_evicted(keys, values, kept, evicted, blocked)
    torch.testing.assert_close(k[0, 0, 0], (keys[0, 0, 0] + keys[0, 0, 2]) / 2)


def test_bad_settings_are_refused_with_the_fix(model):
    with pytest.raises(ValueError, match="merge must be one of"):
        LookMPress(compression_ratio=0.5, merge="weighted")
    with pytest.raises(ValueError, match=r"visual has shape \(1, 7\); it must be \(batch, prompt length\)"):
        prefill(model, prompt_ids(), LookMPress(compression_ratio=0.5, window_size=8, visual=torch.zeros(1, 7, dtype=torch.bool)))


def test_a_vision_language_models_language_tower_keeps_its_text_and_the_budget():
    """kvpress hooks Qwen2.5-VL's language model; the press is told which prompt tokens are the image's."""
    vlm = tiny_qwen(0)
    image, start, end = IMAGE, START, END
    grid = torch.tensor([[1, 8, 8]])  # 64 patches, 16 image tokens after the 2x2 merge
    pixels = torch.randn(64, 3 * 2 * 4 * 4, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, start] + [image] * 16 + [end] + list(range(10, 30))])
    press = LookMPress(compression_ratio=0.25, window_size=4, visual=ids == image)
    caches = []
    for active in (None, press):
        cache = transformers.DynamicCache()
        with torch.no_grad():
            if active is None:
                vlm(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, past_key_values=cache, use_cache=True)
            else:
                with active(vlm):
                    vlm(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, past_key_values=cache, use_cache=True)
        caches.append(cache)
    full, pressed = caches
    kept = compute_n_kept(ids.shape[1], 0.25)
    assert [layer.keys.shape[2] for layer in pressed.layers] == [kept] * 3  # 40 entries, 30 kept: 10 image ones go
    text = ids[0] != image
    for layer, whole in zip(pressed.layers, full.layers):
        for head in range(layer.keys.shape[1]):
            assert bool((layer.keys[0, head][None] == whole.keys[0, head, text][:, None]).all(-1).any(-1).all())


SCORES = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # (layers, kv_heads): layer 0's first head is the visual one


def test_sparsemm_splits_the_budget_by_head_score_and_masks_the_rest(model):
    press = SparseMMPress(compression_ratio=0.75, window_size=8, head_scores=SCORES)
    budgets = press.head_budgets(PROMPT)
    assert int(budgets.sum()) == compute_n_kept(PROMPT, 0.75) * 4  # the whole budget, no more
    assert budgets[0, 0] > budgets[1, 0] == budgets[1, 1] > budgets[0, 1] > 0  # 30 % spread evenly keeps every head alive
    prefill(model, prompt_ids(), press)
    for layer, attention in enumerate(a.self_attn for a in model.model.layers):
        _, head, _ = attention.masked_key_indices
        removed = torch.bincount(head, minlength=2)
        assert removed.tolist() == (PROMPT - budgets[layer]).tolist()
        attention.masked_key_indices = None


def test_sparsemm_masked_entries_no_longer_reach_the_answer(model):
    ids = prompt_ids()
    press = SparseMMPress(compression_ratio=0.75, window_size=8, head_scores=SCORES)
    first = prefill(model, ids, press)
    masked = [a.self_attn.masked_key_indices for a in model.model.layers]
    second = prefill(model, ids, press)
    for layer, (b, h, s) in zip(second.layers, masked):  # scramble what the masked entries hold
        layer.values[b, h, s] = torch.randn_like(layer.values[b, h, s]) * 100
    for attention, indices in zip((a.self_attn for a in model.model.layers), masked):
        attention.masked_key_indices = indices
    scrambled = next_logits(model, second)
    for attention, indices in zip((a.self_attn for a in model.model.layers), masked):
        attention.masked_key_indices = indices
    torch.testing.assert_close(scrambled, next_logits(model, first), rtol=1e-4, atol=1e-4)
    for attention in (a.self_attn for a in model.model.layers):
        attention.masked_key_indices = None


def test_sparsemm_refuses_scores_that_do_not_fit(model):
    with pytest.raises(ValueError, match="non-negative"):
        SparseMMPress(compression_ratio=0.5, head_scores=torch.tensor([[-1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"do not match the model's layers and its 2 KV heads"):
        prefill(model, prompt_ids(), SparseMMPress(compression_ratio=0.5, window_size=8, head_scores=torch.ones(2, 3)))
