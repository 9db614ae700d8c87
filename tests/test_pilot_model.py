"""The reference LVLM: shapes, cached decoding equal to full recomputation, attention on demand."""

import numpy as np
import pytest
import torch

from pilot_experiments import synthvis
from pilot_experiments.kvcache import TEXT, VISUAL
from pilot_experiments.model import CONFIGS, LVLM, LVLMConfig, ModelError, config_for

TINY = LVLMConfig("tiny", vocab_size=len(synthvis.Tokenizer()), vit_dim=32, vit_layers=1, vit_heads=2, lm_dim=32, lm_layers=2, lm_heads=4, lm_kv_heads=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LVLM(TINY).eval()


def prompt_parts(units=2, px=16, text_len=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, units, 3, px, px, generator=g)
    times = torch.arange(units).view(1, units)
    text = torch.randint(5, TINY.vocab_size, (1, text_len), generator=g)
    return pixels, times, text


def prompt(model, **kwargs):
    return model.embed_prompt(*prompt_parts(**kwargs))


def test_prompt_layout_marks_visual_tokens_and_frames(model):
    inputs = prompt(model, units=2, px=16, text_len=5)
    per_unit = (16 // 4) ** 2
    assert inputs.embeds.shape == (1, 1 + 2 * (1 + per_unit) + 5, TINY.lm_dim)
    assert int((inputs.modality == VISUAL).sum()) == 2 * per_unit
    assert inputs.modality[0, 0] == TEXT and inputs.modality[0, 1] == TEXT  # <bos>, <img>
    assert inputs.frame[0, 2 : 2 + per_unit].tolist() == [0] * per_unit
    assert inputs.frame[0, 3 + per_unit : 3 + 2 * per_unit].tolist() == [1] * per_unit
    assert inputs.positions[0].tolist() == list(range(inputs.length))


def test_adapter_pooling_reduces_visual_tokens(model):
    pixels = torch.rand(3, 3, 32, 32)
    assert model.encode_visual(pixels, torch.zeros(3), pool=1).shape == (3, 64, TINY.lm_dim)
    assert model.encode_visual(pixels, torch.zeros(3), pool=2).shape == (3, 16, TINY.lm_dim)


def test_visual_tokens_carry_the_words_of_their_place():
    """Averaged over an object's patches, the place embedding weighs the words of the object's
    row and column band the most, whatever the grid; without place words it adds nothing."""
    from dataclasses import replace

    from pilot_experiments.train import model_config

    tok = synthvis.Tokenizer()
    torch.manual_seed(0)
    model = LVLM(model_config("draft")).eval()
    rows, cols = (torch.tensor(ids) for ids in model.cfg.place_words)
    assert tok.decode(rows) == "top middle bottom" and tok.decode(cols) == "left centre right"
    table = model.embed.weight.detach()
    with torch.no_grad():  # pull the column words together, as training does
        model.embed.weight[cols] = 0.9 * table[cols].mean(0) + 0.1 * table[cols]
    table = model.embed.weight.detach()
    # what tells each band from the others: its word less the mean of its band's words
    rows_d, cols_d = (torch.nn.functional.normalize(table[ids] - table[ids].mean(0), dim=-1) for ids in (rows, cols))
    for grid in (8, 16, 24):
        place = model.place_embedding((grid, grid)).detach().view(grid, grid, -1)
        torch.testing.assert_close(place.pow(2).mean(-1).sqrt().max(), torch.tensor(2.0**0.5), rtol=0.3, atol=0)
        for obj in synthvis.random_scene(np.random.default_rng(grid), grid, grid // 4).objects:
            mean = place[obj.row : obj.row + obj.side, obj.col : obj.col + obj.side].mean((0, 1))
            row, col = synthvis.Scene(grid, (obj,)).region(obj)
            assert synthvis.ROWS[int((rows_d @ mean).argmax())] == row and synthvis.COLS[int((cols_d @ mean).argmax())] == col
    bare = LVLM(replace(model.cfg, place_words=((), ())))
    assert not bare.place_embedding((4, 4)).any()


def test_image_not_multiple_of_patch_is_rejected(model):
    with pytest.raises(ModelError, match="multiple"):
        model.encode_visual(torch.rand(1, 3, 18, 18), torch.zeros(1))


def test_cached_decoding_equals_full_recomputation(model):
    pixels, times, text = prompt_parts()
    inputs = model.embed_prompt(pixels, times, text)
    new = torch.tensor([[7, 9, 11, 13]])
    cache = model.new_cache(1, capacity=8)  # forces the preallocated store to grow
    with torch.no_grad():
        model.prefill(inputs, cache)
        stepwise = [model.decode(new[:, i : i + 1], cache).logits[:, -1] for i in range(new.shape[1])]
        full = model(model.embed_prompt(pixels, times, torch.cat([text, new], dim=1))).logits
    for i, logits in enumerate(stepwise):
        torch.testing.assert_close(logits, full[:, inputs.length + i], atol=1e-5, rtol=1e-5)


def test_attention_weights_on_demand_match_the_fast_path(model):
    inputs = prompt(model)
    with torch.no_grad():
        fast = model(inputs)
        slow = model(inputs, need_attn=True)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
    assert fast.attn is None
    assert len(slow.attn) == TINY.lm_layers
    w = slow.attn[0]
    assert w.shape == (1, TINY.lm_heads, inputs.length, inputs.length)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, TINY.lm_heads, inputs.length))
    assert float(w.triu(1).abs().max()) == 0.0  # causal


def test_attention_weights_of_chosen_layers_and_heads_only(model):
    inputs = prompt(model)
    heads = [TINY.lm_heads - 1, 0]  # one from each kv group, out of order
    bias = torch.zeros(1, TINY.lm_kv_heads, inputs.length, inputs.length)
    bias[:, 1, :, 3:6] = float("-inf")  # the second kv group may not see entries 3 to 5
    for attn_bias in (None, bias):
        with torch.no_grad():
            every = model(inputs, attn_bias=attn_bias, need_attn=True)
            chosen = model(inputs, attn_bias=attn_bias, need_attn={1: heads})
        torch.testing.assert_close(chosen.logits, every.logits, atol=1e-5, rtol=1e-5)
        assert [w is None for w in chosen.attn] == [i != 1 for i in range(TINY.lm_layers)]
        torch.testing.assert_close(chosen.attn[1], every.attn[1][:, heads])
    assert float(chosen.attn[1][:, 0, 6:, 3:6].sum()) == 0.0 and float(chosen.attn[1][:, 1, 6:, 3:6].sum()) > 0
    shared = bias[:, 1:]  # (1, 1, T, T): no head may see entries 3 to 5
    with torch.no_grad():
        broadcast = model(inputs, attn_bias=shared, need_attn={1: heads})
        repeated = model(inputs, attn_bias=shared.expand(-1, TINY.lm_kv_heads, -1, -1), need_attn={1: heads})
    torch.testing.assert_close(broadcast.logits, repeated.logits)
    torch.testing.assert_close(broadcast.attn[1], repeated.attn[1])
    assert float(broadcast.attn[1][:, :, 6:, 3:6].sum()) == 0.0


def test_attention_weights_of_chosen_rows_are_those_rows_of_the_full_weights(model):
    inputs = prompt(model)
    heads = [TINY.lm_heads - 1, 0]
    rows = torch.tensor([[inputs.length - 1, 2, 0, 7]])
    bias = torch.zeros(1, 1, inputs.length, inputs.length).masked_fill(torch.ones(inputs.length, inputs.length, dtype=torch.bool).triu(1), float("-inf"))
    bias[..., 7:, 3:6] = float("-inf")
    for attn_bias in (None, bias):  # causal by default, and under a bias of its own
        with torch.no_grad():
            every = model(inputs, attn_bias=attn_bias, need_attn={1: heads})
            chosen = model(inputs, attn_bias=attn_bias, need_attn={1: heads}, attn_rows=rows)
        torch.testing.assert_close(chosen.logits, every.logits)
        assert chosen.attn[1].shape == (1, len(heads), rows.shape[1], inputs.length)
        torch.testing.assert_close(chosen.attn[1], every.attn[1][:, :, rows[0]])
    assert float(chosen.attn[1][:, :, 3, 3:6].sum()) == 0.0 and float(chosen.attn[1][:, :, 1, 3:].sum()) == 0.0


def test_decode_attention_weights_cover_the_cache(model):
    inputs = prompt(model)
    cache = model.new_cache()
    with torch.no_grad():
        model.prefill(inputs, cache)
        out = model.decode(torch.tensor([[5]]), cache, need_attn=True)
    assert out.attn[1].shape == (1, TINY.lm_heads, 1, inputs.length + 1)


def test_bf16_forward_runs_and_stays_close_to_fp32(model):
    inputs = prompt(model)
    with torch.no_grad():
        ref = model(inputs).logits
        half = LVLM(TINY).eval()
        half.load_state_dict(model.state_dict())
        half = half.to(torch.bfloat16)
        inputs.embeds = inputs.embeds.to(torch.bfloat16)
        cache = half.new_cache()
        out = half.prefill(inputs, cache).logits
    assert cache[0].hot.keys.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1


def test_presets_have_the_promised_sizes():
    vocab = len(synthvis.Tokenizer())
    counts = {name: LVLM(config_for(name, vocab)).param_counts()["total"] for name in ("draft", "target")}
    assert 0.8e6 <= counts["draft"] <= 3e6
    assert counts["target"] >= 3 * counts["draft"]
    assert set(CONFIGS) >= {"draft", "target", "large"}
    with pytest.raises(ModelError, match="unknown model size"):
        config_for("huge", vocab)


def test_several_tokens_appended_at_once_match_full_recomputation(model):
    pixels, times, text = prompt_parts()
    prefix = model.embed_prompt(pixels, times, torch.zeros(1, 0, dtype=torch.long))
    cache = model.new_cache()
    with torch.no_grad():
        model.prefill(prefix, cache)
        shared = cache.clone()
        got = model.decode(text, cache).logits
        full = model(model.embed_prompt(pixels, times, text)).logits[:, prefix.length :]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    assert shared.length == prefix.length  # the clone is independent
