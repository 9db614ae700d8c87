"""The editable KV cache: removal equals masking, compaction, merging, quantization, offloading."""

import pytest
import torch

from pilot_experiments import kvcache
from pilot_experiments.kvcache import VISUAL, KVCacheError, LayerCache
from pilot_experiments.model import LVLM
from tests.test_pilot_model import TINY, prompt_parts

NEW = torch.tensor([[7, 9, 11]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return LVLM(TINY).eval()


def removal_masks(inputs, seed=0):
    """Per layer, per kv-head: remove a random half of the visual entries."""
    g = torch.Generator().manual_seed(seed)
    visual = (inputs.modality == VISUAL).view(1, 1, -1)
    return [visual & (torch.rand(1, TINY.lm_kv_heads, inputs.length, generator=g) < 0.5) for _ in range(TINY.lm_layers)]


def decode_with_cache(model, inputs, edit):
    cache = model.new_cache(capacity=inputs.length + 8)
    with torch.no_grad():
        model.prefill(inputs, cache)
        edit(cache)
        return torch.cat([model.decode(NEW[:, i : i + 1], cache).logits[:, -1] for i in range(NEW.shape[1])]), cache


def masked_full_attention(model, parts, removed):
    """Full recomputation where only the queries after the prompt cannot see removed entries."""
    pixels, times, text = parts
    full = model.embed_prompt(pixels, times, torch.cat([text, NEW], dim=1))
    n_prompt = full.length - NEW.shape[1]
    biases = []
    for r in removed:
        bias = torch.zeros(1, TINY.lm_kv_heads, full.length, full.length)
        cols = torch.nn.functional.pad(r, (0, NEW.shape[1]))  # (1, H, T)
        bias[:, :, n_prompt:] = bias[:, :, n_prompt:].masked_fill(cols.unsqueeze(2), float("-inf"))
        biases.append(bias)
    with torch.no_grad():
        return model(full, attn_bias=biases).logits[0, n_prompt:]


@pytest.mark.parametrize("compact", [False, True])
def test_removing_entries_equals_masking_them_in_full_attention(model, compact):
    parts = prompt_parts()
    inputs = model.embed_prompt(*parts)
    removed = removal_masks(inputs)

    def edit(cache):
        for layer, r in zip(cache.layers, removed):
            layer.remove(r)
        if compact:
            cache.compact(reserve=4)

    got, cache = decode_with_cache(model, inputs, edit)
    want = masked_full_attention(model, parts, removed)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if compact:  # the per-layer maximum of kept entries, plus the decoded ones
        kept = (~removed[0]).sum(-1).max()
        assert cache[0].length == kept + NEW.shape[1]


def test_removal_changes_the_output(model):
    inputs = model.embed_prompt(*prompt_parts())
    removed = removal_masks(inputs)
    base, _ = decode_with_cache(model, inputs, lambda c: None)
    edited, _ = decode_with_cache(model, inputs, lambda c: [layer.remove(r) for layer, r in zip(c.layers, removed)])
    assert (base - edited).abs().max() > 1e-4


def test_compaction_frees_memory_and_keeps_metadata(model):
    inputs = model.embed_prompt(*prompt_parts())
    cache = model.new_cache(capacity=inputs.length)
    with torch.no_grad():
        model.prefill(inputs, cache)
    before = cache.bytes()
    removed = removal_masks(inputs)
    for layer, r in zip(cache.layers, removed):
        layer.remove(r)
    assert cache.bytes().resident == before.resident and cache.bytes().logical < before.logical
    cache.compact()
    after = cache.bytes()
    assert after.resident < before.resident
    layer = cache[0]
    for h in range(TINY.lm_kv_heads):
        kept_positions = torch.nonzero(~removed[0][0, h]).flatten()
        got = layer.view().position[0, h][layer.view().valid[0, h]]
        assert got.tolist() == kept_positions.tolist()


def filled_layer(n=12, heads=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = LayerCache(1, heads, dim, torch.float32, "cpu", capacity=4, offload_device="cpu")
    k, v = torch.randn(1, heads, n, dim, generator=g), torch.randn(1, heads, n, dim, generator=g)
    layer.append(k, v, torch.arange(n).view(1, n), torch.ones(1, n, dtype=torch.long), torch.zeros(1, n, dtype=torch.long))
    return layer, k, v


def test_merged_entry_is_the_mean_of_its_members():
    layer, k, v = filled_layer()
    # head 0: 1, 2 -> 0 then 3 -> 0 ; head 1: 5, 6 -> 4 then 7 -> 4 (running means must stay exact)
    layer.merge(torch.tensor([[[1, 2], [5, 6]]]), torch.tensor([[[0, 0], [4, 4]]]))
    layer.merge(torch.tensor([[[3], [7]]]), torch.tensor([[[0], [4]]]))
    view = layer.view()
    torch.testing.assert_close(view.keys[0, 0, 0], k[0, 0, 0:4].mean(0))
    torch.testing.assert_close(view.values[0, 0, 0], v[0, 0, 0:4].mean(0))
    torch.testing.assert_close(view.keys[0, 1, 4], k[0, 1, 4:8].mean(0))
    torch.testing.assert_close(view.keys[0, 1, 0], k[0, 1, 0])  # untouched
    assert view.count[0, 0, 0] == 4 and view.count[0, 1, 4] == 4
    assert not view.valid[0, 0, 1:4].any() and view.valid[0, 0, 4:].all()
    assert not view.valid[0, 1, 5:8].any() and view.valid[0, 1, :5].all()


def test_merging_two_merged_entries_weights_them_by_count():
    layer, k, _ = filled_layer()
    layer.merge(torch.tensor([[[1], [1]]]), torch.tensor([[[0], [0]]]))  # slot 0 = mean(0, 1)
    layer.merge(torch.tensor([[[3, 4], [3, 4]]]), torch.tensor([[[2, 2], [2, 2]]]))  # slot 2 = mean(2, 3, 4)
    layer.merge(torch.tensor([[[2], [2]]]), torch.tensor([[[0], [0]]]))  # slot 0 = mean(0..4)
    torch.testing.assert_close(layer.view().keys[0, 1, 0], k[0, 1, 0:5].mean(0))


@pytest.mark.parametrize("bits,tolerance", [(8, 1 / 127), (4, 1 / 7)])
def test_quantized_entries_dequantize_within_half_a_step(bits, tolerance):
    layer, k, v = filled_layer()
    select = torch.zeros(1, 2, 12, dtype=torch.bool)
    select[0, 0, :10] = True
    select[0, 1, 2:] = True
    before = layer.resident_bytes()
    layer.quantize(select, bits)
    keys, _, mask = layer.read(1)
    assert layer.length == 2  # what stays hot per head
    block = layer.quant[0].dequantize(torch.float32)
    for got, want in ((block.keys[0, 0], k[0, 0, :10]), (block.values[0, 1], v[0, 1, 2:])):
        step = want.abs().amax(0) * tolerance
        assert ((got - want).abs() <= step / 2 + 1e-6).all()
        assert (got - want).abs().max() > 0  # it is really quantized
    assert keys.shape[2] == 2 + 10 and mask is None  # one query sees every valid entry
    assert layer.entries() == 24
    assert layer.logical_bytes() < 24 * 2 * 8 * 4
    assert layer.resident_bytes() < before


def test_int4_codes_are_packed_two_per_byte():
    layer, _, _ = filled_layer()
    select = torch.ones(1, 2, 12, dtype=torch.bool)
    select[..., 0] = False
    layer.quantize(select, 4)
    assert layer.quant[0].key_codes.shape[-1] == 4 and layer.quant[0].key_codes.dtype == torch.uint8


def test_offloaded_entries_leave_attention_and_come_back(model):
    inputs = model.embed_prompt(*prompt_parts())
    visual = (inputs.modality == VISUAL).view(1, 1, -1).expand(1, TINY.lm_kv_heads, -1)
    full, _ = decode_with_cache(model, inputs, lambda c: None)
    removed, _ = decode_with_cache(model, inputs, lambda c: [layer.remove(visual) for layer in c.layers])

    def offload(cache):
        for layer in cache.layers:
            layer.offload(visual)
        assert cache.bytes().offloaded > 0

    offloaded, _ = decode_with_cache(model, inputs, offload)
    torch.testing.assert_close(offloaded, removed, atol=1e-5, rtol=1e-5)

    def round_trip(cache):
        offload(cache)
        for layer in cache.layers:
            layer.fetch(torch.ones_like(layer.offloaded.valid))

    back, _ = decode_with_cache(model, inputs, round_trip)
    torch.testing.assert_close(back, full, atol=1e-5, rtol=1e-5)


def test_bad_mask_shape_is_rejected():
    layer, _, _ = filled_layer()
    with pytest.raises(KVCacheError, match="mask shape"):
        layer.remove(torch.zeros(1, 2, 5, dtype=torch.bool))
    with pytest.raises(KVCacheError, match="4 or 8 bits"):
        layer.quantize(torch.ones(1, 2, 12, dtype=torch.bool), 3)


def reference_attention(layer: LayerCache, query: torch.Tensor, n_new: int) -> torch.Tensor:
    """softmax(q K^T / sqrt(d) + mask) V over `read`'s full-precision keys and values."""
    keys, values, mask = layer.read(n_new)
    group = query.shape[1] // keys.shape[1]
    scores = query @ keys.repeat_interleave(group, 1).transpose(-1, -2) / query.shape[-1] ** 0.5
    if mask is not None:
        scores = scores + mask.repeat_interleave(group, 1)
    return torch.softmax(scores, -1) @ values.repeat_interleave(group, 1)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n_new", [1, 3])
def test_chunked_attention_over_quantized_blocks_equals_full_dequantization(monkeypatch, bits, n_new):
    monkeypatch.setattr(kvcache, "QUANT_CHUNK", 16)  # several chunks per block
    torch.manual_seed(0)
    batch, kv_heads, d, n = 2, 2, 8, 70
    layer = LayerCache(batch, kv_heads, d, torch.float32, "cpu", 8, "cpu")
    meta = (torch.arange(n).expand(batch, -1), torch.full((batch, n), VISUAL, dtype=torch.uint8),
            torch.zeros(batch, n, dtype=torch.long))
    layer.append(torch.randn(batch, kv_heads, n, d), torch.randn(batch, kv_heads, n, d), *meta)
    layer.keep(torch.rand(batch, kv_heads, n) > 0.3)  # heads keep different entries
    first, second = torch.zeros(batch, kv_heads, n, dtype=torch.bool), None
    first[..., 5:40] = True
    layer.quantize(first, bits)
    second = torch.zeros(batch, kv_heads, layer.length, dtype=torch.bool)
    second[..., : layer.length // 2] = True
    layer.quantize(second, bits)  # two blocks
    new = (torch.full((batch, n_new), n), torch.zeros(batch, n_new, dtype=torch.uint8),
           torch.zeros(batch, n_new, dtype=torch.long))
    layer.append(torch.randn(batch, kv_heads, n_new, d), torch.randn(batch, kv_heads, n_new, d), *new)
    query = torch.randn(batch, 2 * kv_heads, n_new, d)  # two query heads per KV head

    sizes = []
    slice_block = kvcache.QuantBlock.dequantize_slice
    monkeypatch.setattr(kvcache.QuantBlock, "dequantize_slice",
                        lambda self, a, b: sizes.append(min(b, self.meta.valid.shape[2]) - a) or slice_block(self, a, b))
    got = layer.attend(query, n_new, d ** -0.5)
    assert len(layer.quant) == 2 and max(sizes) <= 16 and len(sizes) > 2
    torch.testing.assert_close(got, reference_attention(layer, query, n_new), rtol=1e-5, atol=1e-5)


def test_a_model_decoding_over_a_quantized_cache_never_dequantizes_a_whole_block(model, monkeypatch):
    inputs = model.embed_prompt(*prompt_parts())
    visual = (inputs.modality == VISUAL).view(1, 1, -1).expand(1, TINY.lm_kv_heads, -1)
    quantize = lambda cache: [layer.quantize(visual[..., : layer.length], 8) for layer in cache.layers]  # noqa: E731
    chunked, _ = decode_with_cache(model, inputs, quantize)

    def whole_block(self, dtype):
        raise AssertionError("a decode step dequantized a whole block")

    with monkeypatch.context() as patched:
        patched.setattr(kvcache.QuantBlock, "dequantize", whole_block)
        again, _ = decode_with_cache(model, inputs, quantize)
    torch.testing.assert_close(again, chunked)
    # The same steps with every block dequantized in full (`read`), as decoding did before `attend`.
    monkeypatch.setattr(LayerCache, "attend", lambda self, query, n_new, scale: reference_attention(self, query, n_new))
    full, _ = decode_with_cache(model, inputs, quantize)
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)
