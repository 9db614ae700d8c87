"""Our policies as kvpress presses, on a tiny random Llama: what they keep, what they merge, and that nothing
changes at no compression. Runs where the kvpress extra installs (`pip install -e '.[kvpress]'`)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

kvpress = pytest.importorskip("kvpress", reason="the presses need: pip install -e '.[kvpress]'")
transformers = pytest.importorskip("transformers")

from kvpress.utils import compute_n_kept
from tiny_qwen import END, IMAGE, START, tiny_qwen

from pilot_experiments.presses import (
    HybridPress,
    LookMPress,
    MadaKVPress,
    SparseMMPress,
    merge_evicted,
)

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


PRESSES = {
    "LOOK-M": lambda ratio: LookMPress(compression_ratio=ratio, window_size=8),
    "MadaKV": lambda ratio: MadaKVPress(compression_ratio=ratio, window_size=8),
    "SparseMM": lambda ratio: SparseMMPress(compression_ratio=ratio, window_size=8, head_scores=SCORES),
    "HybridKV": lambda ratio: HybridPress(compression_ratio=ratio, window_size=8, chunk=4),
}


def generate(model, ids, press, steps=3):
    """Greedy logits of `steps` decode steps after the prompt, all inside the press (as kvpress is used)."""
    cache, logits = transformers.DynamicCache(), []
    with torch.no_grad(), (press(model) if press is not None else contextlib.nullcontext()):
        out = model(ids, past_key_values=cache, use_cache=True)
        for _ in range(steps):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(token, past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
    return torch.stack(logits), cache


def clear(model):
    for layer in model.model.layers:
        layer.self_attn.masked_key_indices = None


def entries_attended(model, cache, length, decoded):
    """Prompt entries each (layer, KV head) attends at the latest of `decoded` decode steps: stored less masked."""
    counts = []
    for layer, attention in zip(cache.layers, (a.self_attn for a in model.model.layers)):
        stored = torch.full((layer.keys.shape[1],), layer.keys.shape[2] - decoded)
        if getattr(attention, "masked_key_indices", None) is not None:
            _, head, position = attention.masked_key_indices
            stored -= torch.bincount(head[position < length], minlength=len(stored))
        counts.append(stored)
    return torch.stack(counts)


@pytest.mark.parametrize("name", PRESSES)
def test_every_press_at_full_budget_reproduces_the_uncompressed_logits(model, name):
    ids = prompt_ids()
    plain, _ = generate(model, ids, None)
    pressed, _ = generate(model, ids, PRESSES[name](0.0))
    clear(model)
    assert torch.equal(plain, pressed)


@pytest.mark.parametrize("name", PRESSES)
def test_every_press_at_a_fifth_attends_a_fifth_of_the_prompt(model, name):
    _, cache = generate(model, prompt_ids(), PRESSES[name](0.795), steps=1)  # kvpress floors 100 x (1 - 0.8) to 19
    attended = entries_attended(model, cache, PROMPT, decoded=1)
    clear(model)
    kept = compute_n_kept(PROMPT, 0.795)
    assert kept == 20
    assert int(attended.sum()) == kept * attended.numel()  # over every (layer, KV head): the budget, exactly
    assert bool((attended > 0).all())  # no head is left empty


def test_madakv_keeps_text_and_spends_the_rest_by_visual_preference(model):
    visual = torch.zeros(1, PROMPT, dtype=torch.bool)
    visual[0, 10:70] = True  # 60 image entries, 40 text ones
    press = MadaKVPress(compression_ratio=0.5, window_size=8, visual=visual)
    prefill(model, prompt_ids(), press)
    for attention in (a.self_attn for a in model.model.layers):
        _, _, position = attention.masked_key_indices
        assert bool(visual[0, position].all())  # only image entries are removed
    removed = sum(len(a.self_attn.masked_key_indices[2]) for a in model.model.layers)
    clear(model)
    assert removed == (60 - 10) * 2 * 2  # each head keeps 50: all 40 text entries and 10 image ones on average


def test_hybrid_dynamic_heads_retrieve_whole_chunks_and_the_rest_no_longer_reaches_the_answer(model):
    ids = prompt_ids()
    press = HybridPress(compression_ratio=0.8, window_size=8, chunk=4, dynamic_fraction=0.5)
    cache, token = transformers.DynamicCache(), torch.tensor([[5]])
    with torch.no_grad(), press(model):
        model(ids, past_key_values=cache, use_cache=True)
        assert press._retrieval, "no layer has a dynamic head"
        saved = copy.deepcopy(cache)
        first = model(token, past_key_values=cache, use_cache=True).logits[0, -1]
        masks = {i: a.self_attn.masked_key_indices for i, a in enumerate(model.model.layers)}
        for i, state in press._retrieval.items():
            _, head, position = masks[i]
            for j, h in enumerate(state.dynamic.tolist()):
                kept = sorted(set(range(92)) - set(position[head == h].tolist()))
                assert len(kept) == int(state.budgets[j])
                chunks = {p // 4 for p in kept}
                assert len(chunks) == -(-len(kept) // 4)  # whole chunks, the last one possibly cut
        for layer, (b, h, s) in zip(saved.layers, masks.values()):  # scramble every entry masked at this step
            keep_out = s < PROMPT
            layer.values[b[keep_out], h[keep_out], s[keep_out]] = 100 * torch.randn_like(layer.values[b[keep_out], h[keep_out], s[keep_out]])
        again = model(token, past_key_values=saved, use_cache=True).logits[0, -1]
    clear(model)
    torch.testing.assert_close(again, first, rtol=1e-4, atol=1e-4)


def test_observed_presses_refuse_what_they_cannot_do(model):
    with pytest.raises(ValueError, match=r"compression_ratio must lie in \[0, 1\)"):
        MadaKVPress(compression_ratio=1.0)
    with pytest.raises(ValueError, match="must be longer than window_size=128"):
        prefill(model, prompt_ids(), HybridPress(compression_ratio=0.5, window_size=128))
    clear(model)


@pytest.mark.parametrize("name", ["MadaKV", "HybridKV"])
def test_observed_presses_on_a_vision_language_models_language_tower(name):
    """Qwen2.5-VL's multimodal rotary reaches the presses' window attention and decode-step queries."""
    vlm = tiny_qwen(0)
    grid = torch.tensor([[1, 8, 8]])  # 64 patches, 16 image tokens after the 2x2 merge
    pixels = torch.randn(64, 3 * 2 * 4 * 4, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, START] + [IMAGE] * 16 + [END] + list(range(10, 30))])
    visual = ids == IMAGE
    press = {"MadaKV": MadaKVPress, "HybridKV": HybridPress}[name](compression_ratio=0.3, window_size=4, visual=visual)
    cache = transformers.DynamicCache()
    with torch.no_grad(), press(vlm):
        out = vlm(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, past_key_values=cache, use_cache=True)
        vlm(input_ids=out.logits[:, -1].argmax(-1, keepdim=True), past_key_values=cache, use_cache=True)
    layers = vlm.model.language_model.layers
    removed = 0
    for attention in (layer.self_attn for layer in layers):
        _, _, position = attention.masked_key_indices
        assert bool(visual[0, position].all())  # text is never removed
        removed += len(position)
        attention.masked_key_indices = None
    kv_heads = cache.layers[0].keys.shape[1]
    assert removed == (ids.shape[1] - compute_n_kept(ids.shape[1], 0.3)) * len(layers) * kv_heads


def test_the_kvpress_comparison_runs_every_press_on_a_vision_language_models_picture_path(tmp_path):
    """`hybrid-kv --engine kvpress --model DIR` on a tiny random Qwen2.5-VL: SynthVis pictures, every press at one
    budget; all attend the same share of the context (the budget), below the uncompressed whole."""
    from tiny_qwen import save_tiny_checkpoint

    from pilot_experiments.presses.compare import (
        PRESSES,
        TEXT_ONLY,
        CompareConfig,
        CompareError,
        compare,
    )

    path = save_tiny_checkpoint(tmp_path / "tiny-qwen")
    rows = compare(CompareConfig(model=str(path), episodes=1, budgets=(0.5,), max_new=3)).metrics["rows"]
    assert [r["press"] for r in rows] == ["no compression"] + [label for key, (label, _) in PRESSES.items() if key not in TEXT_ONLY]
    shares = {round(r["context_attended_pct"], 6) for r in rows[1:]}
    assert len(shares) == 1 and 0 < shares.pop() < 100
    assert all(0 <= r["top1_agreement_pct"] <= 100 for r in rows)
    with pytest.raises(CompareError, match="expected-attention cannot run on tiny-qwen: kvpress 0.5.5 averages"):
        compare(CompareConfig(model=str(path), episodes=1, presses=("expected-attention",)))


def test_the_kvpress_comparison_refuses_bad_arguments_in_one_line(capsys):
    from pilot_experiments.__main__ import main

    assert main(["hybrid-kv", "--engine", "kvpress", "--press", "h2o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown press 'h2o'; choose from snapkv, adakv") and "\n" not in err
    assert main(["hybrid-kv", "--engine", "kvpress", "--budget", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: budget 1.5 must lie in (0, 1]: the share of the image's entries kept"


def test_the_kvpress_comparison_refuses_a_model_directory_without_weights(tmp_path, capsys):
    from pilot_experiments.__main__ import main

    (tmp_path / "config.json").write_text("{}")
    assert main(["hybrid-kv", "--engine", "kvpress", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path} holds no config.json or no weights (*.safetensors); "
                                               "download the checkpoint into it first")


@pytest.mark.parametrize("press_class", [LookMPress, MadaKVPress, HybridPress])
def test_the_readme_example_generate_runs_under_each_press_on_a_vision_language_model(press_class):
    """`with Press(...)(model): model.generate(...)` on Qwen2.5-VL: unchanged at no compression, and it runs at 30 %."""
    from tiny_qwen import token_types

    vlm = tiny_qwen(0)
    grid = torch.tensor([[1, 8, 8]])
    pixels = torch.randn(64, 3 * 2 * 4 * 4, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, START] + [IMAGE] * 16 + [END] + list(range(10, 30))])
    kwargs = dict(pixel_values=pixels, image_grid_thw=grid, max_new_tokens=4, do_sample=False, **token_types(vlm, ids, IMAGE))
    plain = vlm.generate(ids, **kwargs)
    with press_class(compression_ratio=0.0, window_size=4, visual=ids == IMAGE)(vlm):
        assert torch.equal(vlm.generate(ids, **kwargs), plain)
    with press_class(compression_ratio=0.3, window_size=4, visual=ids == IMAGE)(vlm):
        assert vlm.generate(ids, **kwargs).shape == plain.shape
    for layer in vlm.model.language_model.layers:
        layer.self_attn.masked_key_indices = None
