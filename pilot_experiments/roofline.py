"""Roofline model of LVLM inference: FLOPs, bytes, arithmetic intensity and bound per stage.

The three stages of survey section 2.2 are costed from a model's shapes (``catalogs/models.yaml``):

* encode  -- the vision tower over ``Np`` patches, compute-bound for any realistic image;
* prefill -- the language model over ``Nv + Nt`` prompt tokens, which also writes their KV cache;
* decode  -- ``No`` single-token steps, each reading every weight and the whole KV cache.

A stage's FLOPs ``F`` and bytes moved ``Q`` give its arithmetic intensity ``I = F / Q``; on an
accelerator with peak ``pi`` FLOP/s and bandwidth ``beta`` B/s (``catalogs/hardware.yaml``) the
stage is compute-bound when ``I`` exceeds the ridge ``pi / beta`` and its predicted latency is
``max(F / (eta_c pi), Q / (eta_m beta))`` with achievable-efficiency factors ``eta``.

Bytes count the weights read once per stage (per step for decode) and the KV cache written or read;
``count_activations=True`` also counts every activation tensor each unfused operator reads and
writes (attention itself fused, FlashAttention style). This module needs no torch: the website
imports it to draw the chart at build time.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

CATALOG_DIR = Path(__file__).resolve().parent / "catalogs"
BYTES_FP16 = 2
Stage = Literal["encode", "prefill", "decode"]
STAGES: tuple[Stage, ...] = ("encode", "prefill", "decode")

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class RooflineError(Exception):
    """A catalog entry is missing or malformed, or a stage was asked for with impossible sizes."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# Catalog schemas
# --------------------------------------------------------------------------------------------------


class GPU(_Frozen):
    """One accelerator's public peak figures."""

    name: str = Field(description="Catalog key, e.g. 'A100-SXM4-80GB'.")
    peak_tflops_fp16: Positive = Field(description="Dense FP16/BF16 tensor-core peak, TFLOP/s.")
    memory_bandwidth_gbs: Positive = Field(description="Device-memory bandwidth, GB/s (1e9 B/s).")
    memory_gib: Positive = Field(description="Device memory, GiB.")
    tdp_w: Positive = Field(description="Board power limit, watts (used for energy estimates).")
    price_per_gpu_hour_usd: Annotated[float, Field(ge=0)] = Field(
        description="Default price of one GPU-hour in USD; studies take it as a parameter."
    )
    interconnect: str = Field(description="Name of the GPU-to-GPU link in the `links` catalog.")

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops_fp16 * 1e12

    @property
    def bandwidth(self) -> float:
        return self.memory_bandwidth_gbs * 1e9

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30

    @property
    def ridge_intensity(self) -> float:
        """FLOP per byte at which the compute roof meets the bandwidth roof."""
        return self.peak_flops / self.bandwidth


class Link(_Frozen):
    """A transfer path between two workers: bandwidth per direction and a fixed latency."""

    name: str = Field(description="Catalog key, e.g. 'nvlink4'.")
    bandwidth_gbs: Positive = Field(description="Bandwidth per direction, GB/s.")
    latency_us: Annotated[float, Field(ge=0)] = Field(description="Fixed cost per transfer, microseconds.")

    def transfer_seconds(self, num_bytes: float) -> float:
        return self.latency_us * 1e-6 + num_bytes / (self.bandwidth_gbs * 1e9)


class HardwareCatalog(_Frozen):
    gpus: tuple[GPU, ...]
    links: tuple[Link, ...]

    def gpu(self, name: str) -> GPU:
        for gpu in self.gpus:
            if gpu.name == name:
                return gpu
        raise RooflineError(f"unknown GPU {name!r}; the catalog has {[g.name for g in self.gpus]}")

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.name == name:
                return link
        raise RooflineError(f"unknown link {name!r}; the catalog has {[l.name for l in self.links]}")


class VisionTower(_Frozen):
    hidden: PositiveInt = Field(description="Width of the ViT residual stream.")
    layers: PositiveInt = Field(description="Number of ViT blocks.")
    heads: PositiveInt = Field(description="Attention heads per block.")
    mlp_hidden: PositiveInt = Field(description="Inner width of the ViT MLP.")
    mlp: Literal["gelu", "swiglu"] = Field(description="gelu: 2 matrices; swiglu: 3 (gate, up, down).")
    patch_size: PositiveInt = Field(description="Patch side in pixels.")
    patch_input: PositiveInt = Field(description="Values per patch fed to the patch embedding.")
    patches_per_visual_token: PositiveInt = Field(
        description="Patches merged into one LLM visual token (r = Np / Nv)."
    )
    attention_window: PositiveInt | None = Field(
        default=None, description="Patches per attention window; None means full attention."
    )
    full_attention_layers: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Blocks that attend globally although a window is set."
    )


class Adapter(_Frozen):
    input: PositiveInt = Field(description="Adapter input width (merged patch features).")
    hidden: PositiveInt = Field(description="Adapter hidden width.")
    output: PositiveInt = Field(description="Adapter output width, equal to the LLM width.")


class LanguageModel(_Frozen):
    hidden: PositiveInt = Field(description="Width of the LM residual stream.")
    layers: PositiveInt = Field(description="Number of decoder blocks.")
    heads: PositiveInt = Field(description="Query heads per block.")
    kv_heads: PositiveInt = Field(description="Key/value heads per block (grouped-query attention).")
    head_dim: PositiveInt = Field(description="Width of one head.")
    mlp_hidden: PositiveInt = Field(description="Inner width of the MLP.")
    mlp: Literal["gelu", "swiglu"] = Field(description="gelu: 2 matrices; swiglu: 3.")
    vocab: PositiveInt = Field(description="Vocabulary size (LM head rows).")


class ModelShape(_Frozen):
    """The dimensions of one LVLM that set its per-stage cost."""

    name: str = Field(description="Catalog key.")
    vision: VisionTower
    adapter: Adapter
    llm: LanguageModel


class ModelCatalog(_Frozen):
    models: tuple[ModelShape, ...]

    def model(self, name: str) -> ModelShape:
        for model in self.models:
            if model.name == name:
                return model
        raise RooflineError(f"unknown model {name!r}; the catalog has {[m.name for m in self.models]}")


def _load_yaml(name: str) -> dict:
    path = CATALOG_DIR / name
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RooflineError(f"cannot read catalog {path}: {error}") from error


@functools.cache
def load_hardware() -> HardwareCatalog:
    """The accelerator and link catalog from ``catalogs/hardware.yaml``."""
    return HardwareCatalog.model_validate(_load_yaml("hardware.yaml"))


@functools.cache
def load_models() -> ModelCatalog:
    """The model-shape catalog from ``catalogs/models.yaml``."""
    return ModelCatalog.model_validate(_load_yaml("models.yaml"))


# --------------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------------


def _mlp_matrices(kind: str) -> int:
    return 3 if kind == "swiglu" else 2


def vision_layer_params(v: VisionTower) -> int:
    """Weights of one ViT block's matrices (biases and norms ignored)."""
    return 4 * v.hidden * v.hidden + _mlp_matrices(v.mlp) * v.hidden * v.mlp_hidden


def vision_params(model: ModelShape) -> int:
    """Vision tower plus adapter weights."""
    v, a = model.vision, model.adapter
    return v.patch_input * v.hidden + v.layers * vision_layer_params(v) + a.input * a.hidden + a.hidden * a.output


def llm_layer_params(m: LanguageModel) -> int:
    """Weights of one decoder block's matrices (biases and norms ignored)."""
    q_and_out = 2 * m.hidden * m.heads * m.head_dim
    kv = 2 * m.hidden * m.kv_heads * m.head_dim
    return q_and_out + kv + _mlp_matrices(m.mlp) * m.hidden * m.mlp_hidden


def llm_params(model: ModelShape) -> int:
    """Decoder blocks plus the LM head (the embedding table is a lookup, read row by row)."""
    m = model.llm
    return m.layers * llm_layer_params(m) + m.hidden * m.vocab


def kv_bytes_per_token(model: ModelShape, bytes_per_value: int = BYTES_FP16) -> int:
    """Bytes of keys plus values one token adds to the cache across all layers."""
    m = model.llm
    return 2 * m.layers * m.kv_heads * m.head_dim * bytes_per_value


# --------------------------------------------------------------------------------------------------
# Stage costs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageCost:
    """FLOPs and bytes of one stage for one batch; intensity and bound follow from them."""

    stage: Stage
    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    def bound(self, gpu: GPU) -> Literal["compute", "memory"]:
        return "compute" if self.intensity >= gpu.ridge_intensity else "memory"

    def latency(self, gpu: GPU, compute_efficiency: float = 1.0, memory_efficiency: float = 1.0) -> float:
        """Roofline latency in seconds on one GPU: the slower of the compute and the memory time."""
        return max(
            self.flops / (gpu.peak_flops * compute_efficiency),
            self.bytes / (gpu.bandwidth * memory_efficiency),
        )

    def attained_flops(self, gpu: GPU) -> float:
        """FLOP/s the roofline allows at this intensity: min(peak, I * bandwidth)."""
        return min(gpu.peak_flops, self.intensity * gpu.bandwidth)


def _transformer_activation_elements(width: int, q_width: int, kv_width: int, mlp_hidden: int, mlp: str) -> int:
    """Activation values one token makes a block's unfused operators read plus write.

    norm, QKV projection, fused attention, output projection, residual add, norm, MLP projections,
    gating, down projection, residual add: inputs read plus outputs written, once each.
    """
    attention_io = (width + q_width + 2 * kv_width) + (q_width + 2 * kv_width + q_width) + (q_width + width)
    residuals_and_norms = 2 * (2 * width) + 2 * (3 * width)
    if mlp == "swiglu":
        mlp_io = (width + 2 * mlp_hidden) + (2 * mlp_hidden + mlp_hidden) + (mlp_hidden + width)
    else:
        mlp_io = (width + mlp_hidden) + (2 * mlp_hidden) + (mlp_hidden + width)
    return attention_io + residuals_and_norms + mlp_io


def encode_cost(
    model: ModelShape, patches: int, batch: int = 1, count_activations: bool = False, value_bytes: int = BYTES_FP16
) -> StageCost:
    """Vision tower and adapter over ``patches`` patches per request for ``batch`` requests."""
    if patches <= 0 or batch <= 0:
        raise RooflineError(f"encode needs patches > 0 and batch > 0, got patches={patches}, batch={batch}")
    v, a = model.vision, model.adapter
    tokens = batch * patches
    merged = tokens / v.patches_per_visual_token
    linear = 2 * tokens * (v.patch_input * v.hidden + v.layers * vision_layer_params(v))
    linear += 2 * merged * (a.input * a.hidden + a.hidden * a.output)
    full_layers = v.layers if v.attention_window is None else v.full_attention_layers
    window = patches if v.attention_window is None else min(v.attention_window, patches)
    attention = 4 * v.hidden * tokens * (full_layers * patches + (v.layers - full_layers) * window)
    num_bytes = value_bytes * vision_params(model)
    if count_activations:
        per_patch = v.layers * _transformer_activation_elements(v.hidden, v.hidden, v.hidden, v.mlp_hidden, v.mlp)
        per_patch += v.patch_input + v.hidden
        num_bytes += value_bytes * (tokens * per_patch + merged * (a.input + 2 * a.hidden + a.output))
    return StageCost("encode", linear + attention, num_bytes)


def prefill_cost(
    model: ModelShape, visual_tokens: int, text_tokens: int, batch: int = 1, count_activations: bool = False,
    value_bytes: int = BYTES_FP16,
) -> StageCost:
    """Language model over ``Nv + Nt`` prompt tokens per request (causal attention), writing their KV."""
    n = visual_tokens + text_tokens
    if n <= 0 or batch <= 0 or visual_tokens < 0 or text_tokens < 0:
        raise RooflineError(f"prefill needs Nv, Nt >= 0 with Nv + Nt > 0 and batch > 0, got {visual_tokens}, {text_tokens}, {batch}")
    m = model.llm
    q_width = m.heads * m.head_dim
    linear = 2 * batch * n * m.layers * llm_layer_params(m) + 2 * batch * m.hidden * m.vocab
    attention = 4 * q_width * m.layers * batch * n * (n + 1) / 2
    num_bytes = value_bytes * llm_params(model) + batch * n * kv_bytes_per_token(model, value_bytes)
    if count_activations:
        num_bytes += value_bytes * batch * n * llm_activation_elements_per_token(model)
    return StageCost("prefill", linear + attention, num_bytes)


def llm_activation_elements_per_token(model: ModelShape) -> int:
    """Unfused activation elements one token writes and reads through every LM layer."""
    m = model.llm
    return m.layers * _transformer_activation_elements(
        m.hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim, m.mlp_hidden, m.mlp
    )


def decode_cost(
    model: ModelShape, context_tokens: int, output_tokens: int = 1, batch: int = 1, count_activations: bool = False,
    value_bytes: int = BYTES_FP16,
) -> StageCost:
    """``No`` decode steps for ``batch`` requests whose prompt held ``context_tokens`` tokens.

    Every step reads all LM weights once for the batch and each request's KV cache (which grows by one
    token per step), computes one token per request and writes its KV entry.
    """
    if context_tokens < 0 or output_tokens <= 0 or batch <= 0:
        raise RooflineError(
            f"decode needs context >= 0, output_tokens > 0, batch > 0; got {context_tokens}, {output_tokens}, {batch}"
        )
    m = model.llm
    q_width = m.heads * m.head_dim
    # Context seen by step s (s = 0 .. No-1) is context_tokens + s + 1 including the new token.
    context_sum = output_tokens * context_tokens + output_tokens * (output_tokens + 1) / 2
    linear = 2 * batch * output_tokens * llm_params(model)
    attention = 4 * q_width * m.layers * batch * context_sum
    weight_bytes = value_bytes * llm_params(model) * output_tokens
    kv_bytes = batch * kv_bytes_per_token(model, value_bytes) * (context_sum + output_tokens)
    num_bytes = weight_bytes + kv_bytes
    if count_activations:
        num_bytes += value_bytes * batch * output_tokens * llm_activation_elements_per_token(model)
    return StageCost("decode", linear + attention, num_bytes)


def stage_costs(
    model: ModelShape,
    patches: int,
    text_tokens: int,
    output_tokens: int,
    batch: int = 1,
    count_activations: bool = False,
) -> dict[Stage, StageCost]:
    """The three stages of one request shape: ``Np`` patches (``Nv = Np / r`` visual tokens), ``Nt``, ``No``."""
    visual_tokens = patches // model.vision.patches_per_visual_token
    return {
        "encode": encode_cost(model, patches, batch, count_activations),
        "prefill": prefill_cost(model, visual_tokens, text_tokens, batch, count_activations),
        "decode": decode_cost(model, visual_tokens + text_tokens, output_tokens, batch, count_activations),
    }


# --------------------------------------------------------------------------------------------------
# Chart
# --------------------------------------------------------------------------------------------------


class ChartPoint(_Frozen):
    label: str = Field(description="Legend text, e.g. 'prefill (predicted)'.")
    stage: Stage
    intensity: Positive = Field(description="Arithmetic intensity, FLOP/byte.")
    flops_per_second: Positive = Field(description="Attained (predicted or measured) FLOP/s.")
    kind: Literal["predicted", "measured"]


class ChartRoof(_Frozen):
    gpu: str
    peak_flops: Positive
    bandwidth: Positive
    ridge_intensity: Positive


class RooflineChart(_Frozen):
    """Everything needed to draw the Figure 4-style chart, as plain data (JSON-serialisable)."""

    model: str
    request: dict[str, int] = Field(description="Np, Nt, No and batch of the plotted request.")
    roofs: tuple[ChartRoof, ...]
    points: tuple[ChartPoint, ...]


DEFAULT_CHART_GPUS = ("A100-SXM4-80GB", "H100-SXM5-80GB", "H200-SXM-141GB")


def chart_data(
    model_name: str = "Qwen2.5-VL-7B",
    gpu_names: tuple[str, ...] = DEFAULT_CHART_GPUS,
    patches: int = 1225,
    text_tokens: int = 206,
    output_tokens: int = 128,
    batch: int = 1,
    reference_gpu: str | None = None,
) -> RooflineChart:
    """Roofs of ``gpu_names`` and the predicted stage points of one request shape.

    Points sit at the FLOP/s the roofline allows on ``reference_gpu`` (default: the first GPU). The
    defaults are one 490 x 490 px image (35 x 35 = 1,225 patches, 306 visual tokens) and a 512-token
    prompt, the operating point of survey Figure 4.
    """
    hardware, model = load_hardware(), load_models().model(model_name)
    gpus = [hardware.gpu(name) for name in gpu_names]
    reference = hardware.gpu(reference_gpu) if reference_gpu else gpus[0]
    costs = stage_costs(model, patches, text_tokens, output_tokens, batch)
    points = tuple(
        ChartPoint(
            label=f"{stage} (predicted, {reference.name})",
            stage=stage,
            intensity=cost.intensity,
            flops_per_second=cost.attained_flops(reference),
            kind="predicted",
        )
        for stage, cost in costs.items()
    )
    roofs = tuple(
        ChartRoof(gpu=g.name, peak_flops=g.peak_flops, bandwidth=g.bandwidth, ridge_intensity=g.ridge_intensity)
        for g in gpus
    )
    request = {"patches": patches, "text_tokens": text_tokens, "output_tokens": output_tokens, "batch": batch}
    return RooflineChart(model=model.name, request=request, roofs=roofs, points=points)


STAGE_COLOURS = {"encode": "tab:red", "prefill": "tab:orange", "decode": "tab:blue"}
LABEL_OFFSETS = {"encode": (6, 6), "prefill": (-30, -16), "decode": (6, -12)}


def draw_chart(chart: RooflineChart, axes=None):
    """Draw ``chart`` log-log: one roof per GPU with a dotted ridge line, and the stage points.

    Draws into ``axes`` when given, else into a new figure; returns the matplotlib Figure.
    """
    import matplotlib

    if axes is None:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7.5, 5))
    figure = axes.figure
    intensities = [p.intensity for p in chart.points] + [r.ridge_intensity for r in chart.roofs]
    low, high = min(0.1, min(intensities) / 3), max(1e4, max(intensities) * 3)
    grid = [low * (high / low) ** (i / 200) for i in range(201)]
    for roof, line_style in zip(chart.roofs, ["-", "--", "-.", ":"] * 3):
        axes.plot(grid, [min(roof.peak_flops, x * roof.bandwidth) for x in grid], line_style, color="black",
                  linewidth=1.2, label=f"{roof.gpu} (ridge {roof.ridge_intensity:.0f} FLOP/B)")
        axes.axvline(roof.ridge_intensity, color="grey", linestyle=":", linewidth=0.8)
    for point in chart.points:
        axes.scatter(point.intensity, point.flops_per_second, color=STAGE_COLOURS[point.stage], s=50,
                     marker="o" if point.kind == "predicted" else "^", label=point.label, zorder=3)
        axes.annotate(f"{point.stage} I={point.intensity:.3g}", (point.intensity, point.flops_per_second),
                      textcoords="offset points", xytext=LABEL_OFFSETS[point.stage], fontsize=7)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("Arithmetic intensity (FLOP/byte)")
    axes.set_ylabel("Performance (FLOP/s)")
    request = chart.request
    axes.set_title(f"{chart.model}: Np={request['patches']}, Nt={request['text_tokens']}, "
                   f"No={request['output_tokens']}, batch {request['batch']}", fontsize=9)
    axes.legend(fontsize=6, loc="lower right")
    axes.grid(True, which="major", alpha=0.3)
    return figure


# --------------------------------------------------------------------------------------------------
# Measured stages of the reference LVLM on the current device (needs torch)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureSettings:
    """What the ``roofline`` command times: one reference size, one image size, a batch."""

    size: str
    image_px: int
    text_tokens: int
    batch: int
    repeats: int


MEASURE_PRESETS = {
    "smoke": MeasureSettings(size="draft", image_px=32, text_tokens=16, batch=1, repeats=2),
    "cpu": MeasureSettings(size="target", image_px=128, text_tokens=32, batch=1, repeats=5),
    "gpu": MeasureSettings(size="large", image_px=256, text_tokens=64, batch=8, repeats=10),
}


class MeasuredStage(_Frozen):
    stage: Stage
    seconds: Positive = Field(description="Median wall time of the stage's forward pass.")
    flops: Positive = Field(description="FLOPs of the stage by this module's accounting.")
    bytes: Positive = Field(description="Bytes of the stage by this module's accounting (the run's dtype).")

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds


def measure_device_roof(device) -> ChartRoof:
    """The current device's own roofs, measured: a large matrix product and a large tensor copy."""
    import torch

    from pilot_experiments import harness, metrics

    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = 8192 if cuda else 1536
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    matmul = metrics.time_call(lambda: a @ b, device, warmup=2, repeats=5)
    elements = (1 << 28) if cuda else (1 << 24)
    source = torch.empty(elements, device=device, dtype=torch.float32)
    target = torch.empty_like(source)
    copy = metrics.time_call(lambda: target.copy_(source), device, warmup=2, repeats=5)
    peak, bandwidth = 2 * n**3 / matmul.median_s, 2 * source.nbytes / copy.median_s
    return ChartRoof(gpu=f"{harness.device_name(device)} (measured)", peak_flops=peak, bandwidth=bandwidth,
                     ridge_intensity=peak / bandwidth)


def measure_reference_stages(settings: MeasureSettings, device) -> tuple[ModelShape, dict, list[MeasuredStage]]:
    """Time encode, prefill and one decode step of the reference LVLM (seeded random weights: timing
    does not depend on training) and cost the same shapes with this module's accounting."""
    import torch

    from pilot_experiments import metrics, synthvis
    from pilot_experiments.model import LVLM, config_for

    torch.manual_seed(0)
    model = LVLM(config_for(settings.size, len(synthvis.Tokenizer()))).to(device).eval()
    shape = load_models().model(f"reference-{settings.size}")
    value_bytes = next(model.parameters()).element_size()
    b, px = settings.batch, settings.image_px
    pixels = torch.rand(b, 1, 3, px, px, device=device)
    times = torch.zeros(b, 1, device=device)
    text = torch.randint(5, model.cfg.vocab_size, (b, settings.text_tokens), device=device)
    with torch.no_grad():
        inputs = model.embed_prompt(pixels, times, text)
        prompt = inputs.length
        patches = (px // shape.vision.patch_size) ** 2
        encode_time = metrics.time_call(lambda: model.encode_visual(pixels.flatten(0, 1), times.flatten()), device,
                                        repeats=settings.repeats)
        prefill_time = metrics.time_call(lambda: model.prefill(inputs, model.new_cache(b, capacity=prompt)), device,
                                         repeats=settings.repeats)
        cache = model.new_cache(b, capacity=prompt + 4 * settings.repeats + 8)
        model.prefill(inputs, cache)
        token = torch.full((b, 1), 5, device=device, dtype=torch.long)
        decode_time = metrics.time_call(lambda: model.decode(token, cache), device, repeats=settings.repeats)
    request = {"patches": patches, "text_tokens": prompt - patches, "output_tokens": 1, "batch": b}
    costs = {
        "encode": encode_cost(shape, patches, b, value_bytes=value_bytes),
        "prefill": prefill_cost(shape, patches, prompt - patches, b, value_bytes=value_bytes),
        "decode": decode_cost(shape, prompt, 1, b, value_bytes=value_bytes),
    }
    seconds = {"encode": encode_time.median_s, "prefill": prefill_time.median_s, "decode": decode_time.median_s}
    measured = [MeasuredStage(stage=stage, seconds=seconds[stage], flops=costs[stage].flops, bytes=costs[stage].bytes)
                for stage in STAGES]
    return shape, request, measured


def device_chart(shape: ModelShape, request: dict, measured: list[MeasuredStage], roof: ChartRoof) -> RooflineChart:
    """The current device's measured roof with the reference stages, predicted (on that roof) and measured."""
    points = []
    for stage in measured:
        attainable = min(roof.peak_flops, stage.intensity * roof.bandwidth)
        points.append(ChartPoint(label=f"{stage.stage} (predicted)", stage=stage.stage, intensity=stage.intensity,
                                 flops_per_second=attainable, kind="predicted"))
        points.append(ChartPoint(label=f"{stage.stage} (measured)", stage=stage.stage, intensity=stage.intensity,
                                 flops_per_second=stage.flops_per_second, kind="measured"))
    return RooflineChart(model=shape.name, request=request, roofs=(roof,), points=tuple(points))


def survey_comparison() -> list[dict]:
    """Our figures beside survey Appendix E's, for the results table (see tests for the assumptions)."""
    a100, qwen = load_hardware().gpu("A100-SXM4-80GB"), load_models().model("Qwen2.5-VL-7B")
    crossing = next(n for n in range(1, 8192) if prefill_cost(qwen, n, 0).intensity >= 160)
    return [
        {"figure": "A100 ridge (FLOP/B)", "survey": 153.0, "ours": a100.ridge_intensity, "assumption": "312 TFLOP/s / 2,039 GB/s"},
        {"figure": "decode I", "survey": 1.0, "ours": decode_cost(qwen, 0, 1).intensity,
         "assumption": "Qwen2.5-VL-7B, batch 1, FP16, weights only"},
        {"figure": "encode I", "survey": 1200.0, "ours": encode_cost(qwen, 1225).intensity,
         "assumption": "1,225 patches (490 px image), weights only"},
        {"figure": "prefill I at 512 tokens", "survey": 160.0, "ours": prefill_cost(qwen, 306, 206).intensity,
         "assumption": "weights + KV; survey's 160 is reached at the crossing below"},
        {"figure": "prefill I at 512 tokens, activations counted", "survey": 160.0,
         "ours": prefill_cost(qwen, 306, 206, count_activations=True).intensity, "assumption": "unfused activations"},
        {"figure": "prompt tokens where prefill I = 160", "survey": 512.0, "ours": float(crossing),
         "assumption": "weights + KV"},
    ]


def run_cli(args: argparse.Namespace) -> int:
    """``python -m pilot_experiments roofline``: Figure 4 for the catalog GPUs plus measured stages here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from pilot_experiments import harness

    harness.check_preset(args.preset)
    device = harness.pick_device(args.preset)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    settings = MEASURE_PRESETS[args.preset]
    survey_chart = chart_data(args.model, tuple(args.gpus))
    outcome = {}

    def plot(figure) -> None:
        left, right = figure.subplots(1, 2)
        draw_chart(survey_chart, left)
        draw_chart(outcome["chart"], right)

    def study(_config) -> harness.StudyRecord:
        roof = measure_device_roof(device)
        shape, request, measured = measure_reference_stages(settings, device)
        outcome.update(chart=device_chart(shape, request, measured, roof), measured=measured, roof=roof)
        catalog_costs = stage_costs(load_models().model(args.model), **survey_chart.request)
        rows = [{"model": args.model, "gpu": gpu.name, "stage": stage, "intensity_flop_per_byte": cost.intensity,
                 "bound": cost.bound(gpu), "predicted_ms": cost.latency(gpu) * 1e3}
                for gpu in map(load_hardware().gpu, args.gpus) for stage, cost in catalog_costs.items()]
        rows += [{"model": shape.name, "gpu": roof.gpu, "stage": m.stage, "intensity_flop_per_byte": m.intensity,
                  "bound": "compute" if m.intensity >= roof.ridge_intensity else "memory",
                  "predicted_ms": max(m.flops / roof.peak_flops, m.bytes / roof.bandwidth) * 1e3,
                  "measured_ms": m.seconds * 1e3, "measured_flop_per_s": m.flops_per_second} for m in measured]
        metrics = {"survey_comparison": survey_comparison(), "survey_chart": survey_chart.model_dump(),
                   "device_chart": outcome["chart"].model_dump(), "device_roof": roof.model_dump(),
                   "measured": [m.model_dump() for m in measured]}
        notes = (
            "Left: predicted stage points of one request (survey Figure 4) on the catalog GPUs; decode covers all "
            f"No tokens. Right: the reference LVLM `{settings.size}` (seeded random weights) timed on this device "
            "(triangles) beside the roofline prediction on the device's own measured roofs (circles: a large "
            "matrix product and a large copy). Predicted latency = max(FLOPs / peak, bytes / bandwidth)."
        )
        return harness.StudyRecord(metrics, rows, plot, notes)

    config = {"model": args.model, "gpus": args.gpus, "measure": settings.__dict__, "threads": torch.get_num_threads()}
    results_dir = Path(args.results_dir) if args.results_dir else harness.RESULTS_DIR
    path = harness.run_study("roofline", args.preset, study, config, device=device, results_dir=results_dir)

    for row in survey_comparison():
        print(f"{row['figure']:>45}: survey {row['survey']:8.1f}  ours {row['ours']:8.1f}  ({row['assumption']})")
    for m in outcome["measured"]:
        print(f"{m.stage:>8} on {outcome['roof'].gpu}: I={m.intensity:7.2f} FLOP/B, {m.seconds * 1e3:8.3f} ms, "
              f"{m.flops_per_second / 1e9:8.2f} GFLOP/s")
    print(f"results: {path}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("roofline", help="roofline chart of the LVLM stages (survey Figure 4) plus measured stages")
    parser.add_argument("--preset", choices=("smoke", "cpu", "gpu"), default="cpu")
    parser.add_argument("--model", default="Qwen2.5-VL-7B", help="catalog model for the predicted chart")
    parser.add_argument("--gpus", nargs="+", default=list(DEFAULT_CHART_GPUS), help="catalog GPUs to draw")
    parser.add_argument("--results-dir", default=None, help="write here instead of pilot_experiments/results")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for the timings (1 by default: on a shared machine, multi-threaded "
                             "kernels of small models stall waiting for busy cores)")
    parser.set_defaults(handler=run_cli)
