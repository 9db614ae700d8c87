"""Serving workloads: request shapes, arrival processes and the JSON-lines trace format.

A workload is a mix of request classes (image VQA, multi-image, long video, text-only) plus an arrival
process (Poisson, or Gamma inter-arrival times whose coefficient of variation > 1 makes bursts).
``generate`` turns a workload and a rate into a list of ``Request``; ``write_trace``/``read_trace``
store and load the same list as one JSON object per line, so a real trace can replace a generated one:

    {"arrival_s": 0.0132, "modality": "image", "images": 1, "patches": 4096, "visual_tokens": 1024,
     "text_tokens": 61, "output_tokens": 64}
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Modality = Literal["text", "image", "video"]
NonNegativeInt = Annotated[int, Field(ge=0)]


class WorkloadError(Exception):
    """A workload or trace is malformed (bad mix, bad rate, unreadable trace line)."""


class Request(BaseModel):
    """One request as the simulator and the trace file see it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arrival_s: Annotated[float, Field(ge=0)] = Field(description="Arrival time, seconds from trace start.")
    modality: Modality = Field(description="text: no image; image: one or more images; video: frames.")
    images: NonNegativeInt = Field(default=0, description="Images or frames the encoder processes.")
    patches: NonNegativeInt = Field(default=0, description="Vision-encoder patches, all images together (Np).")
    visual_tokens: NonNegativeInt = Field(default=0, description="Visual tokens entering the LLM (Nv).")
    text_tokens: Annotated[int, Field(gt=0)] = Field(description="Text prompt tokens (Nt).")
    output_tokens: Annotated[int, Field(gt=0)] = Field(description="Tokens to generate (No).")

    @model_validator(mode="after")
    def _text_requests_have_no_patches(self) -> Request:
        if (self.modality == "text") != (self.patches == 0):
            raise ValueError("text requests have 0 patches and image/video requests have > 0")
        return self

    @property
    def prompt_tokens(self) -> int:
        return self.visual_tokens + self.text_tokens


@dataclass(frozen=True)
class RequestClass:
    """A request shape: images of ``patches_per_image`` patches; text and output lengths drawn uniformly
    from ``[lo, hi]``."""

    name: str
    modality: Modality
    images: int
    patches_per_image: int
    visual_tokens_per_image: int
    text_tokens: tuple[int, int]
    output_tokens: tuple[int, int]

    def __post_init__(self) -> None:
        if self.modality == "text" and (self.images or self.patches_per_image):
            raise WorkloadError(f"{self.name}: a text request class has no images")
        if self.modality != "text" and (self.images <= 0 or self.patches_per_image <= 0):
            raise WorkloadError(f"{self.name}: an {self.modality} request class needs images > 0 and patches > 0")
        for lo, hi in (self.text_tokens, self.output_tokens):
            if not 0 < lo <= hi:
                raise WorkloadError(f"{self.name}: token ranges must satisfy 0 < lo <= hi, got {lo}, {hi}")

    def draw(self, arrival_s: float, rng: random.Random) -> Request:
        return Request(
            arrival_s=arrival_s,
            modality=self.modality,
            images=self.images,
            patches=self.images * self.patches_per_image,
            visual_tokens=self.images * self.visual_tokens_per_image,
            text_tokens=rng.randint(*self.text_tokens),
            output_tokens=rng.randint(*self.output_tokens),
        )


@dataclass(frozen=True)
class Workload:
    """A named mix of request classes (weights need not sum to 1) and an arrival process.

    ``burstiness`` is the coefficient of variation of the inter-arrival times: 1 gives Poisson
    arrivals, > 1 Gamma-distributed gaps (bursty), < 1 smoother than Poisson.
    """

    name: str
    mix: tuple[tuple[RequestClass, float], ...]
    burstiness: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        if not self.mix or any(weight <= 0 for _, weight in self.mix):
            raise WorkloadError(f"{self.name}: the mix needs at least one class, each with weight > 0")
        if self.burstiness <= 0:
            raise WorkloadError(f"{self.name}: burstiness (CV of inter-arrival gaps) must be > 0")

    def with_burstiness(self, burstiness: float) -> Workload:
        suffix = "poisson" if burstiness == 1 else f"gamma-cv{burstiness:g}"
        return Workload(f"{self.name}-{suffix}", self.mix, burstiness, self.description)


def unit_rate_gaps(count: int, burstiness: float, seed: int) -> list[float]:
    """``count`` inter-arrival gaps with mean 1 s and coefficient of variation ``burstiness``.

    Scaling these gaps by 1/rate gives the arrivals at any rate from the same random draw, so sweeps
    over rate compare like with like (and goodput search sees a monotone load).
    """
    rng = random.Random(seed)
    shape = 1.0 / burstiness**2
    return [rng.gammavariate(shape, 1.0 / shape) for _ in range(count)]


def generate(workload: Workload, rate: float, count: int, seed: int = 0) -> list[Request]:
    """``count`` requests of ``workload`` arriving at ``rate`` requests per second on average."""
    if rate <= 0 or not math.isfinite(rate):
        raise WorkloadError(f"rate must be a positive finite number of requests per second, got {rate}")
    gaps = unit_rate_gaps(count, workload.burstiness, seed)
    rng = random.Random(seed + 1)
    classes = [cls for cls, _ in workload.mix]
    weights = [weight for _, weight in workload.mix]
    requests, clock = [], 0.0
    for gap in gaps:
        clock += gap / rate
        requests.append(rng.choices(classes, weights)[0].draw(clock, rng))
    return requests


def write_trace(requests: list[Request], path: Path) -> None:
    """Store requests as JSON lines (the trace format described in this module's docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(request.model_dump_json() + "\n" for request in requests))


def read_trace(path: Path) -> list[Request]:
    """Load a JSON-lines trace, sorted by arrival; a bad line raises ``WorkloadError`` naming it."""
    requests = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            requests.append(Request.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as error:
            raise WorkloadError(f"{path}:{number}: not a valid trace request: {error}") from error
    return sorted(requests, key=lambda r: r.arrival_s)


def qwen_workloads() -> dict[str, Workload]:
    """Workloads sized for Qwen2.5-VL (14-px patches, 2 x 2 merge: 4 patches per visual token)."""
    image_vqa = RequestClass("image-vqa", "image", 1, 4096, 1024, (32, 96), (16, 96))
    multi_image = RequestClass("multi-image", "image", 4, 1296, 324, (64, 160), (32, 128))
    long_video = RequestClass("long-video", "video", 64, 1024, 256, (32, 96), (64, 192))
    text_only = RequestClass("text-only", "text", 0, 0, 0, (256, 1024), (64, 256))
    return {
        "image-vqa": Workload("image-vqa", ((image_vqa, 1.0),), description="one 896 px image, short answer"),
        "multi-image": Workload("multi-image", ((multi_image, 1.0),), description="four 504 px images"),
        "long-video": Workload(
            "long-video", ((long_video, 1.0),), description="128 frames (64 temporal pairs), 16k visual tokens"
        ),
        "text-only": Workload("text-only", ((text_only, 1.0),), description="chat without images"),
        "balanced-mix": Workload(
            "balanced-mix",
            ((image_vqa, 0.4), (multi_image, 0.2), (text_only, 0.4)),
            description="general VQA traffic: images and text",
        ),
        "video-mix": Workload(
            "video-mix", ((long_video, 0.2), (image_vqa, 0.4), (text_only, 0.4)), description="video plus chat"
        ),
    }
