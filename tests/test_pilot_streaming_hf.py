"""The streaming memory on a real architecture: a tiny random Qwen2.5-VL (tests/tiny_qwen.py)
reads a SynthVis stream frame by frame with multimodal RoPE, keeps frames whole when it
re-positions them, and runs the streaming study with `--model PATH`."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the transformers backend needs: pip install '.[hf]'")

from tiny_qwen import save_tiny_checkpoint, tiny_chat_prompter

from pilot_experiments import synthvis
from pilot_experiments.__main__ import main
from pilot_experiments.kvcache import VISUAL
from pilot_experiments.studies.streaming.chat import ChatStreamMemory
from pilot_experiments.studies.streaming.policies import FullCache, SinkWindow
from pilot_experiments.studies.streaming.stream import StreamSpec, build_stream

QUESTION = ("what", "colour", "was", "the", "circle", "before", "it", "vanished", "?")


@pytest.fixture(scope="module")
def chat():
    return tiny_chat_prompter()


@pytest.fixture(scope="module")
def stream():
    return build_stream(StreamSpec(60, near_max=2, middle_max=12, questions_per_bin=1), seed=1)


def feed(chat, policy, stream, frames):
    memory = ChatStreamMemory(chat, reserve=64 + 2)
    with torch.no_grad():
        for f in frames:
            pixels = stream.pixels(f)
            picked = policy.tokens(torch.zeros(64, 48), None)
            memory.append_frame(memory.encode_frame(pixels, float(f))[picked], picked, f)
            policy.after_frame(memory)
    return memory


def test_a_fed_stream_reads_as_the_same_frames_given_as_images(chat, stream):
    memory = feed(chat, FullCache(), stream, range(3))
    ids = memory.question_ids(QUESTION)
    with torch.no_grad():
        streamed = chat.backend.decode(torch.tensor([ids]), memory.fork(len(ids))).logits[0, -1]
        clip = synthvis.Episode(torch.stack([stream.pixels(f) for f in range(3)]), [0, 1, 2], [stream.video.scene(f) for f in range(3)], [], stream.video)
        inputs = chat.prompt(clip, QUESTION)
        prompted = chat.backend.prefill(inputs, chat.backend.new_cache(1, inputs.length)).logits[0, -1]
    assert memory.length + len(ids) == inputs.length
    assert int((memory.cache[0].view().modality == VISUAL).sum()) == 3 * 64 * memory.cache[0].kv_heads
    torch.testing.assert_close(streamed, prompted, atol=1e-4, rtol=1e-4)


def test_evicting_frames_lays_the_kept_ones_out_as_if_they_had_come_alone(chat, stream):
    evicted = feed(chat, SinkWindow(1, 2), stream, range(5))  # keeps the opening and frames 3, 4
    alone = feed(chat, FullCache(), stream, (3, 4))
    assert evicted.frames().tolist() == alone.frames().tolist()
    a, b = evicted.cache[0].view(), alone.cache[0].view()
    assert torch.equal(a.position, b.position)
    torch.testing.assert_close(a.keys, b.keys, atol=1e-4, rtol=1e-4)  # layer 0's keys depend on the token alone
    assert int(evicted.cache.next_position[0]) == int(alone.cache.next_position[0])


def test_the_streaming_study_runs_on_a_checkpoint_directory(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "tiny-qwen")
    assert main(["streaming", "--preset", "smoke", "--model", str(path), "--frames", "50", "--results-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "streaming-tiny-qwen" / "smoke-cpu.json").read_text())
    metrics = payload["metrics"]
    assert metrics["model"]["checkpoint"] == str(path) and metrics["stream"]["markers_per_frame"] == 2
    assert set(metrics["policies"]) == {"full", "window", "sinks+window", "frame-budget", "infinipot", "hierarchical"}
    assert metrics["policies"]["hierarchical"]["answers"]
