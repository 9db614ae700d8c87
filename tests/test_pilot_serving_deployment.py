"""The real multi-process deployment, profile fitting, and the study's Table 4 summary."""

import json

import numpy as np
import pytest
import torch

from pilot_experiments.studies.serving import deployment
from pilot_experiments.studies.serving.costs import (
    CostModelError,
    Profile,
    ProfileCosts,
    fit_nonnegative,
)


def test_real_deployment_returns_the_same_tokens_as_the_single_process_model():
    requests = deployment.synthvis_requests(3, [0.0, 0.02, 0.04], [4, 1, 3], image_px=64, seed=5)
    served, stats = deployment.serve("draft", seed=11, requests=requests, timeout_s=300)
    model = deployment.build_model("draft", seed=11)
    expected = [deployment.generate_reference(model, request) for request in requests]
    assert [s.tokens for s in served] == expected
    assert len({token for tokens in expected for token in tokens}) > 1  # the tokens depend on the input
    for s in served:
        assert 0 <= s.arrival_s <= s.encode_done_s <= s.first_token_s <= s.finish_s
    assert stats["decode_stepping_s"] > 0


def test_prompt_from_visual_tokens_lays_out_the_prompt_like_the_model():
    model = deployment.build_model("draft", seed=1)
    (request,) = deployment.synthvis_requests(1, [0.0], [2], image_px=64)
    with torch.no_grad():
        visual = deployment.encode_request(model, request)
        split = deployment.prompt_from_visual_tokens(model, visual, request.times, request.text_ids)
        whole = model.embed_prompt(request.pixels[None], request.times[None], request.text_ids[None])
    for field in ("embeds", "positions", "modality", "frame", "token_ids"):
        assert torch.equal(getattr(split, field), getattr(whole, field)), field
    assert "encode_visual" not in vars(model)


def test_nonnegative_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    features = np.column_stack([np.ones(30), rng.uniform(10, 1000, 30), rng.uniform(0, 1e5, 30)])
    truth = np.array([2e-3, 5e-5, 0.0])
    coefficients = fit_nonnegative(features, features @ truth)
    assert coefficients == pytest.approx(truth, abs=1e-9)
    assert (fit_nonnegative(features, features @ np.array([1e-3, -1e-6, 1e-8]) + 1e-3) >= 0).all()


def test_profile_round_trips_and_costs_scale_with_workers(tmp_path):
    profile = Profile(model="reference:draft", device="test", encode_coefficients=(1e-3, 1e-5, 0.0),
                      llm_coefficients=(1e-3, 2e-5, 1e-8, 1e-3, 1e-6), embedding_bytes_per_visual_token=512,
                      kv_bytes_per_token=1024, kv_capacity_tokens=1e6, fit_relative_error={"encode": 0.0},
                      samples={})
    profile.save(tmp_path / "profile.json")
    costs = ProfileCosts(Profile.load(tmp_path / "profile.json"))
    assert costs.encode_seconds([100], 1.0) == pytest.approx(1e-3 + 1e-3)
    # two decode rows with 30 context tokens in all, shared by two workers
    assert costs.llm_seconds([], [10, 20], 2.0) == pytest.approx((1e-3 + 2 * 1e-3 + 30 * 1e-6) / 2)
    # one 50-token prompt: 50 new tokens, 50 * 51 / 2 causal pairs
    assert costs.llm_seconds([(50, 0)], [], 1.0) == pytest.approx(1e-3 + 50 * 2e-5 + 1275 * 1e-8)
    assert costs.source == "profile:reference:draft@test"
    with pytest.raises(CostModelError, match="run the profiling step again"):
        Profile.load(tmp_path / "missing.json")


def test_serving_command_writes_table_4_as_numbers(tmp_path):
    """The smoke preset (simulator only) writes JSON, markdown and both plots; winners are real extrema."""
    from pilot_experiments.__main__ import main

    assert main(["serving", "--preset", "smoke", "--parts", "simulator", "--results-dir", str(tmp_path)]) == 0
    (result,) = (tmp_path / "serving").glob("smoke-*.json")
    metrics = json.loads(result.read_text())["metrics"]
    assert metrics["cost_source"].startswith("roofline:Qwen2.5-VL-7B@H100")
    video = metrics["workloads"]["long-video"]
    assert video["reference_rate_rps"] == video["goodput_rps"]["monolithic"] > 0
    rows = {row["metric"]: row for row in metrics["table4"] if row["workload"] == "long-video"}
    ttfts = {family: m["ttft_p99_s"] for family, m in video["at_reference_rate"].items()}
    assert rows["P99 TTFT (s)"]["winner value"] == min(ttfts.values())
    assert rows["goodput (req/s)"]["winner value"] == max(video["goodput_rps"].values())
    target = metrics["long_video_target"]
    assert target["ratio_goodput_split"] == pytest.approx(
        target["monolithic_p99_ttft_s"] / target["stage_based_goodput_split_p99_ttft_s"])
    for suffix in (".md", ".svg"):
        assert result.with_suffix(suffix).exists()
    assert result.with_name(result.stem + "-ttft-vs-rate.svg").exists()


def test_an_unknown_encoder_is_refused_before_any_worker_starts():
    requests = deployment.synthvis_requests(1, [0.0], [2], image_px=64)
    with pytest.raises(deployment.DeploymentError, match="unknown encoder 'vit-l'; choose one of"):
        deployment.serve("draft", seed=0, requests=requests, encoder="vit-l")
