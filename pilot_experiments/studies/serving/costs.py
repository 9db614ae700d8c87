"""Stage costs for the serving simulator, from the roofline model or from a measured profile.

Both sources answer the same three questions for an instance holding ``gpus`` GPUs (a fraction for an
SM-multiplexed share of one GPU):

* ``encode_seconds(image_patches, gpus)`` -- one encoder batch; ``image_patches`` lists the patches of
  every image (or video frame group) in the batch;
* ``llm_seconds(prefill, decode, gpus)`` -- one language-model iteration that extends the prompts in
  ``prefill`` (pairs of new tokens and tokens already cached, so chunked prefill is covered) and takes
  one decode step for each context length in ``decode``;
* how many bytes an embedding or a KV cache transfer moves, and how many KV tokens fit in memory.

``source`` names where the numbers came from; every simulator result records it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pilot_experiments.roofline import (
    GPU,
    ModelShape,
    encode_cost,
    kv_bytes_per_token,
    llm_layer_params,
    llm_params,
    vision_params,
)

from .workloads import Request

BYTES_FP16 = 2


class CostModelError(Exception):
    """A cost model cannot answer: a profile is missing or unreadable, or a request never fits in memory."""


class StageCostModel(Protocol):
    source: str

    def encode_seconds(self, image_patches: Sequence[int], gpus: float) -> float: ...

    def llm_seconds(self, prefill: Sequence[tuple[int, int]], decode: Sequence[int], gpus: float) -> float: ...

    def embedding_bytes(self, request: Request) -> float: ...

    def kv_bytes(self, tokens: int) -> float: ...

    def kv_capacity_tokens(self, gpus: float, hosts_vision: bool) -> float: ...


def image_patches(request: Request) -> list[int]:
    """Patches of each image (or frame group) of a request, the unit the encoder attends within."""
    if request.images == 0:
        return []
    return [request.patches // request.images] * request.images


def _attention_pairs(prefill: Sequence[tuple[int, int]]) -> float:
    """Query-key pairs of causal attention when ``new`` tokens join ``past`` cached ones."""
    return sum(new * past + new * (new + 1) / 2 for new, past in prefill)


@dataclass(frozen=True)
class RooflineCosts:
    """Stage latencies from FLOPs and bytes (``pilot_experiments.roofline``) on a catalog GPU.

    Latency = max(FLOPs / (eta_c * peak), bytes / (eta_m * bandwidth)) + a fixed per-iteration overhead;
    ``g`` GPUs in one instance (tensor parallel) multiply both roofs by ``g * tp_efficiency ** log2(g)``.
    """

    model: ModelShape
    gpu: GPU
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    tensor_parallel_efficiency: float = 0.9
    iteration_overhead_s: float = 0.002
    memory_fraction: float = 0.9

    @property
    def source(self) -> str:
        return (
            f"roofline:{self.model.name}@{self.gpu.name}"
            f"(eta_c={self.compute_efficiency},eta_m={self.memory_efficiency})"
        )

    def _scale(self, gpus: float) -> float:
        return gpus * self.tensor_parallel_efficiency ** math.log2(gpus) if gpus > 1 else gpus

    def _seconds(self, flops: float, num_bytes: float, gpus: float) -> float:
        scale = self._scale(gpus)
        compute = flops / (self.gpu.peak_flops * self.compute_efficiency * scale)
        memory = num_bytes / (self.gpu.bandwidth * self.memory_efficiency * scale)
        return max(compute, memory) + self.iteration_overhead_s

    @functools.cached_property
    def _llm_constants(self) -> tuple[float, float, float, float, float]:
        """Per-token linear FLOPs, LM-head FLOPs per row, attention FLOPs per pair, weight and KV bytes."""
        m = self.model.llm
        return (2 * m.layers * llm_layer_params(m), 2 * m.hidden * m.vocab, 4 * m.heads * m.head_dim * m.layers,
                BYTES_FP16 * llm_params(self.model), kv_bytes_per_token(self.model))

    @functools.cached_property
    def _image_flops_by_patches(self) -> dict[int, float]:
        return {}

    def _image_flops(self, patches: int) -> float:
        known = self._image_flops_by_patches
        if patches not in known:
            known[patches] = encode_cost(self.model, patches).flops
        return known[patches]

    def encode_seconds(self, image_patches: Sequence[int], gpus: float) -> float:
        if not image_patches:
            return 0.0
        flops = sum(self._image_flops(patches) for patches in image_patches)
        return self._seconds(flops, BYTES_FP16 * vision_params(self.model), gpus)

    def llm_seconds(self, prefill: Sequence[tuple[int, int]], decode: Sequence[int], gpus: float) -> float:
        if not prefill and not decode:
            return 0.0
        per_token, per_row, per_pair, weight_bytes, kv_per_token = self._llm_constants
        new_tokens = sum(new for new, _ in prefill) + len(decode)
        pairs = _attention_pairs(prefill) + sum(decode) + len(decode)
        flops = per_token * new_tokens + per_row * (len(prefill) + len(decode)) + per_pair * pairs
        cached_reads = sum(past for _, past in prefill) + sum(decode)
        return self._seconds(flops, weight_bytes + kv_per_token * (new_tokens + cached_reads), gpus)

    def embedding_bytes(self, request: Request) -> float:
        return request.visual_tokens * self.model.llm.hidden * BYTES_FP16

    def kv_bytes(self, tokens: int) -> float:
        return tokens * kv_bytes_per_token(self.model)

    def kv_capacity_tokens(self, gpus: float, hosts_vision: bool) -> float:
        weights = BYTES_FP16 * (llm_params(self.model) + (vision_params(self.model) if hosts_vision else 0))
        free = gpus * self.gpu.memory_bytes * self.memory_fraction - weights
        if free <= 0:
            raise CostModelError(
                f"{self.model.name} weights ({weights / 2**30:.1f} GiB) do not fit in {gpus} x {self.gpu.name}; "
                "give the instance more GPUs"
            )
        return free / kv_bytes_per_token(self.model)


class Profile(BaseModel):
    """Stage latencies measured on one device, fitted to linear models of the work in a batch.

    encode   = e[0] + e[1] * sum(patches) + e[2] * sum(patches^2)             (per image attention)
    llm step = l[0] + l[1] * new tokens + l[2] * attention pairs + l[3] * decode rows + l[4] * sum(context)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Which model was timed, e.g. 'reference:target'.")
    device: str = Field(description="Device name the timings come from.")
    encode_coefficients: tuple[float, float, float]
    llm_coefficients: tuple[float, float, float, float, float]
    embedding_bytes_per_visual_token: float
    kv_bytes_per_token: float
    kv_capacity_tokens: float = Field(description="KV tokens one worker may hold.")
    fit_relative_error: dict[str, float] = Field(description="Median |fit - measured| / measured per stage.")
    samples: dict[str, list[list[float]]] = Field(description="Raw (features..., seconds) rows per stage.")

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as error:
            raise CostModelError(f"cannot read profile {path}: {error}; run the profiling step again") from error


def encode_features(image_patches: Sequence[int]) -> list[float]:
    return [1.0, float(sum(image_patches)), float(sum(p * p for p in image_patches))]


def llm_features(prefill: Sequence[tuple[int, int]], decode: Sequence[int]) -> list[float]:
    return [1.0, float(sum(new for new, _ in prefill)), _attention_pairs(prefill), float(len(decode)), float(sum(decode))]


def fit_nonnegative(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Least squares with coefficients >= 0: refit without any column whose coefficient came out negative.

    Rows are weighted by 1 / seconds so the fit minimises relative, not absolute, error.
    """
    weights = 1.0 / seconds
    active = list(range(features.shape[1]))
    while True:
        solution, *_ = np.linalg.lstsq(features[:, active] * weights[:, None], seconds * weights, rcond=None)
        if (solution >= 0).all():
            coefficients = np.zeros(features.shape[1])
            coefficients[active] = solution
            return coefficients
        active = [column for column, value in zip(active, solution) if value >= 0]


@dataclass(frozen=True)
class ProfileCosts:
    """Stage latencies from a fitted ``Profile``; ``gpus`` workers divide the time (a share multiplies it)."""

    profile: Profile

    @property
    def source(self) -> str:
        return f"profile:{self.profile.model}@{self.profile.device}"

    def encode_seconds(self, image_patches: Sequence[int], gpus: float) -> float:
        if not image_patches:
            return 0.0
        return float(np.dot(self.profile.encode_coefficients, encode_features(image_patches))) / gpus

    def llm_seconds(self, prefill: Sequence[tuple[int, int]], decode: Sequence[int], gpus: float) -> float:
        if not prefill and not decode:
            return 0.0
        return float(np.dot(self.profile.llm_coefficients, llm_features(prefill, decode))) / gpus

    def embedding_bytes(self, request: Request) -> float:
        return request.visual_tokens * self.profile.embedding_bytes_per_visual_token

    def kv_bytes(self, tokens: int) -> float:
        return tokens * self.profile.kv_bytes_per_token

    def kv_capacity_tokens(self, gpus: float, hosts_vision: bool) -> float:
        return self.profile.kv_capacity_tokens * gpus
