"""Roofline model: catalogs, per-stage FLOPs/bytes, and the survey's Appendix E figures."""

import subprocess
import sys

import pytest

from pilot_experiments import roofline
from pilot_experiments.roofline import (
    RooflineError,
    chart_data,
    decode_cost,
    encode_cost,
    load_hardware,
    load_models,
    prefill_cost,
)

A100 = "A100-SXM4-80GB"


def qwen7b():
    return load_models().model("Qwen2.5-VL-7B")


def test_catalogs_hold_the_required_gpus_and_models():
    gpus = {g.name for g in load_hardware().gpus}
    assert {A100, "H100-SXM5-80GB", "H200-SXM-141GB", "L40S", "RTX-4090"} <= gpus
    models = {m.name for m in load_models().models}
    assert {"Qwen2.5-VL-7B", "Qwen2.5-VL-32B", "LLaVA-1.5-7B"} <= models


def test_catalog_parameter_counts_match_the_published_model_sizes():
    # Qwen2.5-VL-7B: ~0.67 B vision + ~7.1 B language (matrices only, embedding table excluded).
    assert 0.6e9 < roofline.vision_params(qwen7b()) < 0.75e9
    assert 6.8e9 < roofline.llm_params(qwen7b()) < 7.4e9
    assert 31e9 < roofline.llm_params(load_models().model("Qwen2.5-VL-32B")) < 33e9


def test_a100_ridge_point_is_153_flop_per_byte():
    """Survey eq. 10: 312 TFLOP/s / 2,039 GB/s."""
    assert load_hardware().gpu(A100).ridge_intensity == pytest.approx(153.0, abs=0.1)


def test_decode_intensity_is_about_one_at_batch_one():
    """Survey eq. 11: 2|theta| FLOPs over 2|theta| bytes per generated token.

    Assumption: batch 1, FP16 weights, a short context (the KV cache read is small next to the
    weights). A 512-token context lowers it by about 1 % with GQA.
    """
    assert decode_cost(qwen7b(), context_tokens=0, output_tokens=1).intensity == pytest.approx(1.0, abs=0.01)
    assert decode_cost(qwen7b(), context_tokens=512, output_tokens=1).intensity == pytest.approx(1.0, abs=0.03)


def test_decode_intensity_grows_with_batch_and_stays_memory_bound():
    gpu = load_hardware().gpu(A100)
    single = decode_cost(qwen7b(), 512, 1, batch=1)
    batched = decode_cost(qwen7b(), 512, 1, batch=32)
    assert batched.intensity > 20 * single.intensity
    assert batched.bound(gpu) == "memory"


def test_encode_intensity_is_about_1200_for_a_1200_patch_image():
    """Survey Appendix E models the ViT at I ~ 1,200.

    Assumption: bytes are the vision tower's FP16 weights read once (activations stay on chip), batch 1,
    and the image gives ~1,200 patches (Qwen2.5-VL at 490 x 490 px = 35 x 35 = 1,225 patches).
    Then I ~ Np, compute-bound at about 8x the ridge.
    """
    cost = encode_cost(qwen7b(), patches=1225)
    assert cost.intensity == pytest.approx(1200, rel=0.05)
    assert cost.bound(load_hardware().gpu(A100)) == "compute"


def test_prefill_reaches_160_near_the_ridge():
    """Survey Appendix E places prefill at I ~ 160 and ties it to ~512 prompt tokens.

    With the weights-only accounting that reproduces decode = 1 and encode = 1,200, prefill intensity is
    close to the prompt length N (each weight is reused once per token), so I = 160 is reached at
    N ~ 165 tokens. At N = 512 our model gives ~475 (weights + KV) or ~350 when every unfused
    activation read and write is counted too. Reaching 160 at 512 tokens would need about three times
    the bytes of weights + KV + activations; we therefore reproduce the survey's intensity (160, beside
    the ridge) at the prompt length our accounting assigns to it and record the 512-token gap here.
    """
    model = qwen7b()
    crossing = next(n for n in range(1, 4096) if prefill_cost(model, n, 0).intensity >= 160)
    assert 150 <= crossing <= 200
    assert prefill_cost(model, crossing, 0).intensity == pytest.approx(160, rel=0.02)
    at_512 = prefill_cost(model, 306, 206)
    assert 440 < at_512.intensity < 520
    assert 300 < prefill_cost(model, 306, 206, count_activations=True).intensity < at_512.intensity


def test_counting_activations_lowers_intensity_but_not_flops():
    plain = encode_cost(qwen7b(), 1225)
    with_activations = encode_cost(qwen7b(), 1225, count_activations=True)
    assert with_activations.flops == plain.flops
    assert with_activations.bytes > plain.bytes


def test_prefill_flops_grow_quadratically_through_attention():
    model = qwen7b()
    linear_only = 2 * model.llm.layers * roofline.llm_layer_params(model.llm)  # LM head: last token only
    per_token_short = prefill_cost(model, 1000, 0).flops / 1000
    per_token_long = prefill_cost(model, 16000, 0).flops / 16000
    assert per_token_short > linear_only * 0.99
    assert per_token_long - per_token_short > 0.1 * linear_only


def test_latency_is_the_slower_roof():
    gpu = load_hardware().gpu(A100)
    decode = decode_cost(qwen7b(), 512, 1)
    assert decode.latency(gpu) == pytest.approx(decode.bytes / gpu.bandwidth)
    encode = encode_cost(qwen7b(), 1225)
    assert encode.latency(gpu, compute_efficiency=0.5) == pytest.approx(encode.flops / (0.5 * gpu.peak_flops))


def test_impossible_sizes_raise_a_roofline_error():
    with pytest.raises(RooflineError, match="patches > 0"):
        encode_cost(qwen7b(), 0)
    with pytest.raises(RooflineError, match="unknown GPU"):
        load_hardware().gpu("TPU-v9")


def test_chart_data_has_a_roof_per_gpu_and_three_stage_points():
    chart = chart_data()
    assert [r.gpu for r in chart.roofs] == ["A100-SXM4-80GB", "H100-SXM5-80GB", "H200-SXM-141GB"]
    by_stage = {p.stage: p for p in chart.points}
    assert by_stage["decode"].intensity < by_stage["prefill"].intensity < by_stage["encode"].intensity
    # A memory-bound point sits on the slanted roof: attained FLOP/s = I x bandwidth.
    assert by_stage["decode"].flops_per_second == pytest.approx(by_stage["decode"].intensity * 2039e9)
    assert chart.model_dump_json()


def test_roofline_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from pilot_experiments.roofline import chart_data, draw_chart\n"
        "draw_chart(chart_data())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("size", ["draft", "target", "large"])
def test_reference_entries_mirror_the_model_configs(size):
    """The catalog's reference-* shapes agree with model.py's presets, matrix for matrix."""
    from pilot_experiments.model import LVLM, config_for
    from pilot_experiments.synthvis import Tokenizer

    model = LVLM(config_for(size, len(Tokenizer())))
    shape = load_models().model(f"reference-{size}")

    def matrices(module):
        return sum(p.numel() for p in module.parameters() if p.dim() == 2)

    vision_and_adapter = matrices(model.vision) + matrices(model.adapter) - model.adapter.time.weight.numel()
    assert roofline.vision_params(shape) == vision_and_adapter
    # The LM head is tied to the embedding table: count it once, as the roofline does.
    assert roofline.llm_params(shape) == matrices(model.blocks) + model.embed.weight.numel()
    assert shape.llm.kv_heads == model.cfg.lm_kv_heads and shape.llm.head_dim == model.cfg.head_dim


def test_roofline_command_writes_json_markdown_and_charts(tmp_path):
    """The smoke preset times the draft model here and writes every artefact through the harness."""
    import json

    from pilot_experiments.__main__ import main

    assert main(["roofline", "--preset", "smoke", "--results-dir", str(tmp_path)]) == 0
    (result,) = (tmp_path / "roofline").glob("smoke-*.json")
    payload = json.loads(result.read_text())
    assert payload["study"] == "roofline" and payload["wall_s"] > 0
    measured = {m["stage"]: m for m in payload["metrics"]["measured"]}
    assert set(measured) == {"encode", "prefill", "decode"}
    assert all(m["seconds"] > 0 for m in measured.values())
    assert measured["decode"]["flops"] / measured["decode"]["bytes"] < measured["prefill"]["flops"] / measured["prefill"]["bytes"]
    for suffix in (".md", ".svg"):
        assert result.with_suffix(suffix).exists()
