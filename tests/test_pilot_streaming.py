"""Streaming study: the stream's questions, the policies' caps and the retrieval mechanics.

Mechanics are checked on an untrained (seeded) draft-sized model: what a policy keeps, evicts and
retrieves does not depend on the weights being trained, and it keeps the tests to seconds."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pilot_experiments import synthvis
from pilot_experiments.backends.prompts import ReferencePrompter
from pilot_experiments.kvcache import QuantBlock, Store
from pilot_experiments.model import LVLM, config_for, rope
from pilot_experiments.studies.streaming.memory import (
    StreamMemory,
    capture_queries,
    patchify,
)
from pilot_experiments.studies.streaming.policies import (
    FrameBudget,
    FullCache,
    HierarchicalMemory,
    InfiniPot,
    PolicyError,
    SinkWindow,
    SlidingWindow,
)
from pilot_experiments.studies.streaming.stream import (
    StreamError,
    StreamSpec,
    build_stream,
    evidence_held,
    evidence_lives,
)
from pilot_experiments.studies.streaming.study import config_for as study_config
from pilot_experiments.studies.streaming.study import run_policy, run_streaming
from pilot_experiments.train import TrainResult, train_config

UNITS = 65  # <img> + 8 x 8 patches per 32 px frame


@pytest.fixture(scope="module")
def model() -> LVLM:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return LVLM(config_for("draft", len(synthvis.Tokenizer()))).eval()


@pytest.fixture(scope="module")
def stream():
    return build_stream(StreamSpec(120, near_max=3, middle_max=30, questions_per_bin=3), seed=1)


def feed(model, policy, stream, n_frames):
    """Ingest `n_frames` frames; returns the memory and the cache length after every frame."""
    memory = StreamMemory(model, reserve=UNITS)
    lengths, previous = [], None
    with torch.no_grad():
        for f in range(n_frames):
            patches = patchify(stream.pixels(f), 4)
            visual = model.encode_visual(stream.pixels(f)[None], torch.tensor([float(f)]))[0]
            picked = policy.tokens(patches, previous)
            memory.append_frame(visual[picked], picked, f)
            policy.after_frame(memory)
            lengths.append(memory.length)
            previous = patches
    return memory, lengths


def test_stream_answers_match_the_video(stream):
    assert {q.bin for q in stream.questions} == {"near", "middle", "far", "two-event"}
    for q in stream.questions:
        shape = q.question[4] if q.kind == "vanish-colour" else None
        if q.kind == "vanish-colour":
            (last,) = q.evidence
            seen = [o for o in stream.video.scene(last).objects if o.shape == shape]
            assert [o.colour for o in seen] == list(q.answer)
            assert all(shape not in {o.shape for o in stream.video.scene(f).objects} for f in range(last + 1, q.time + 1))
        else:
            a, b = q.question[6], q.question[9]
            firsts = {s: min(t.appear for t in stream.lives(s)) for s in (a, b)}
            assert q.answer == (min(firsts, key=firsts.get),)
            assert sorted(firsts.values()) == list(q.evidence)
        assert q.distance == q.time - min(q.evidence)


def test_evidence_is_held_only_by_entries_that_show_the_object(stream):
    q = next(q for q in stream.questions if q.kind == "vanish-colour")
    (life,) = evidence_lives(stream, q)
    f = life.vanish - 1
    on = int(stream.video.scene(f).object_patches(life.ident)[0])
    far_away = next(p for p in range(64) if abs(p // 8 - on // 8) > 3 or abs(p % 8 - on % 8) > 3)
    assert evidence_held(stream, q, torch.tensor([-1, f]), torch.tensor([-1, on]))
    assert not evidence_held(stream, q, torch.tensor([-1, f]), torch.tensor([-1, far_away]))
    assert not evidence_held(stream, q, torch.tensor([f]), torch.tensor([-1]))  # a frame's <img> marker is not evidence


def test_stream_refuses_impossible_bins():
    with pytest.raises(StreamError, match="near_max"):
        StreamSpec(100, near_max=50, middle_max=20)


@pytest.mark.parametrize(
    "policy, cap",
    [
        (SlidingWindow(4), 4 * UNITS),
        (SinkWindow(4, 4), 4 + 4 * UNITS),
        (FrameBudget(8, 0.02, 150, 4), 150),
        (InfiniPot(200, sink_tokens=4), 200),
        (HierarchicalMemory(4, 4, 2, 2, grid=8, coarse_after=20), 4 + 4 * UNITS),
    ],
    ids=lambda p: getattr(p, "name", ""),
)
def test_bounded_policies_never_exceed_their_cap(model, stream, policy, cap):
    _, lengths = feed(model, replace(policy), stream, 70)
    assert max(lengths) <= cap
    assert lengths[-1] >= cap // 2  # and they do hold something


def test_full_cache_grows_with_every_frame(model, stream):
    _, lengths = feed(model, FullCache(), stream, 20)
    assert lengths == [1 + UNITS * (f + 1) for f in range(20)]


def test_sinks_and_window_keep_exactly_the_sinks_and_the_recent_frames(model, stream):
    memory, _ = feed(model, SinkWindow(4, 3), stream, 30)
    frames = memory.frames()
    assert frames[:4].tolist() == [-1, 0, 0, 0]  # <bos>, frame 0's <img> and first two patches
    assert memory.patch[:4].tolist() == [-1, -1, 0, 1]
    assert frames[4:].tolist() == [f for f in (27, 28, 29) for _ in range(UNITS)]
    positions = memory.cache[0].view().position[0, 0]
    assert positions.tolist() == list(range(memory.length))  # re-assigned by cache index


def test_repositioned_keys_equal_keys_computed_at_the_new_positions(model, stream):
    memory, _ = feed(model, SinkWindow(4, 2), stream, 12)
    layer0 = model.blocks[0].attn
    with torch.no_grad():
        visual = model.encode_visual(stream.pixels(11)[None], torch.tensor([11.0]))[0]
        x = model.blocks[0].attn_norm(visual)
        raw = layer0.kv(x).view(1, -1, 2, layer0.kv_heads, layer0.head_dim)[:, :, 0].transpose(1, 2)
    slots = torch.nonzero(memory.frames() == 11).flatten()[1:]  # the frame's visual tokens
    expected = rope(raw, slots.view(1, -1), model.cfg.rope_theta)
    torch.testing.assert_close(memory.cache[0].view().keys[:, :, slots], expected, atol=1e-4, rtol=1e-4)


def test_ingest_cost_does_not_grow_for_bounded_policies(model, stream):
    """A frame's prefill attends the working cache plus itself: for bounded policies that count
    has a ceiling set by the knobs alone (reached early), for the full cache it grows."""
    cfg = study_config("smoke", n_frames=80, sample_every=1)
    short = replace(stream, video=replace(stream.video, n_frames=80), questions=())
    ceilings = [
        (SinkWindow(4, 3), 4 + 4 * UNITS),
        (FrameBudget(8, 0.02, 120, 4), 120 + 1 + 8),
        (InfiniPot(150), 150 + UNITS),
        (HierarchicalMemory(3, 4, 2, 2, grid=8, coarse_after=20), 4 + 4 * UNITS),
    ]
    for policy, ceiling in ceilings:
        run = run_policy(ReferencePrompter(model), policy, short, cfg)
        assert max(run.attended) <= ceiling, policy.name
        assert max(run.attended[60:]) > ceiling // 2, policy.name
    full = run_policy(ReferencePrompter(model), FullCache(), short, replace(cfg, memory_budget_mib=8.0))
    assert full.out_of_budget_at is not None
    assert full.attended == [1 + (f + 1) * UNITS for f in range(full.frames_ingested)]
    assert full.attended[-1] > 2 * max(c for _, c in ceilings)


def test_frame_budget_drops_tokens_that_did_not_change():
    policy = FrameBudget(tokens_per_frame=5, change=0.02)
    frame = torch.rand(64, 48)
    assert policy.tokens(frame, frame.clone()).numel() == 0
    moved = frame.clone()
    moved[[3, 9]] = torch.rand(2, 48)
    assert policy.tokens(moved, frame).tolist() == [3, 9]
    assert policy.tokens(torch.rand(64, 48), frame).numel() == 5


def test_patchify_follows_the_vit_raster_order(stream):
    pixels = stream.pixels(5)
    patches = patchify(pixels, 4)
    assert patches.shape == (64, 48)
    torch.testing.assert_close(patches[8 + 3].view(3, 4, 4), pixels[:, 4:8, 12:16])


def test_hierarchical_store_is_compressed_and_coarsened_with_age(model, stream):
    policy = HierarchicalMemory(4, 4, 2, 2, grid=8, coarse_after=20)
    memory, _ = feed(model, policy, stream, 60)
    assert [c.first for c in policy.chunks] == list(range(0, 56 - 1, 2))  # frames 0..55 left the window
    fine = [c for c in policy.chunks if not c.coarse]
    coarse = [c for c in policy.chunks if c.coarse]
    assert fine and coarse and all(c.last <= 59 - 20 for c in coarse)
    assert {c.blocks[0].bits for c in fine} == {8} and {c.blocks[0].bits for c in coarse} == {4}
    fp32_per_frame = UNITS * memory.cache.bytes().logical / memory.length
    assert policy.long_term_bytes() < 56 * fp32_per_frame / 4


def test_retrieval_brings_back_the_chunk_that_holds_the_planted_answer(model, stream):
    tok = synthvis.Tokenizer()
    content = frozenset(i for i in range(len(tok)) if tok.is_visual_content(i))
    policy = HierarchicalMemory(4, 4, 2, 2, grid=8, coarse_after=1000, content_ids=content)
    memory, _ = feed(model, policy, stream, 40)
    ids = tok.encode("what colour was the circle before it vanished ?") + [tok.ans_id]
    probe = memory.fork(len(ids))
    with capture_queries(model) as queries, torch.no_grad():
        model.decode(torch.tensor([ids]), probe)
    planted = next(i for i, c in enumerate(policy.chunks) if i >= 5 and bool((c.patch >= 0).any()))
    chunk = policy.chunks[planted]
    stores = chunk.stores(torch.float32)
    for layer, store in enumerate(stores):  # plant keys that point where the word "circle" looks
        q = queries[layer][0, 4]  # (heads, d)
        kv = q.view(store.keys.shape[1], -1, q.shape[-1]).mean(dim=1)  # (kv_heads, d)
        store.keys[0] = (32 * kv / kv.norm(dim=-1, keepdim=True))[:, None, :]
    chunk.blocks = [QuantBlock.quantize(s, 8) for s in stores]
    relevance = policy.relevance(memory, ids)
    assert relevance.shape == (1, len(policy.chunks))  # one focus word: "circle"
    assert int(relevance[0].argmax()) == planted
    cache, patch = policy.question_cache(memory, ids, extra=len(ids) + 2)
    held = set(cache[0].view().frame[0, 0].tolist())
    assert set(range(chunk.first, chunk.last + 1)) <= held
    assert chunk in policy.last_retrieved and len(patch) == cache.length
    assert cache[0].view().position[0, 0].tolist() == list(range(cache.length))


def test_retrieval_takes_turns_between_the_objects_a_question_names():
    policy = HierarchicalMemory(top_chunks=3)
    relevance = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 9.0, 8.0]])
    assert policy.pick(relevance) == [0, 3, 1]


def test_policies_refuse_impossible_knobs():
    with pytest.raises(PolicyError, match="window_frames"):
        SlidingWindow(0)
    with pytest.raises(PolicyError, match="target"):
        InfiniPot(100, target=1.5)


def test_smoke_study_writes_results(model, tmp_path):
    from pilot_experiments.harness import write_results

    cfg = study_config("smoke", n_frames=50, questions_per_bin=1)
    trained = TrainResult(model, model.cfg, train_config("smoke"), {"note": 0.0}, {}, 0.0, model.param_counts())
    record = run_streaming(cfg, trained)
    path = write_results("streaming", "smoke", "cpu", cfg.seed, cfg, record, 1.0, tmp_path)
    data = json.loads(path.read_text())
    policies = data["metrics"]["policies"]
    assert set(policies) == {"full", "window", "sinks+window", "frame-budget", "infinipot", "hierarchical"}
    assert policies["full"]["out_of_budget_at"] is not None  # the smoke budget is below 50 full frames
    assert policies["hierarchical"]["resident_mib_final"] < policies["full"]["resident_mib_peak"]
    # Only the hierarchical memory brings chunks back from a long-term store when a question comes.
    assert all(policies[n]["moved_kib_per_question"] in (0, None) for n in policies if n != "hierarchical")
    asked = [a for a in policies["hierarchical"]["answers"] if a["retrieved"] is not None]
    assert policies["hierarchical"]["moved_kib_per_question"] > 0 or not asked
    assert (tmp_path / "streaming" / "smoke-cpu.svg").exists() and "KV MiB" in (tmp_path / "streaming" / "smoke-cpu.md").read_text()
    page = (tmp_path / "streaming" / "smoke-cpu.md").read_text()
    assert "No verdicts: a smoke run" in page and "MET:" not in page and "MISSED:" not in page


def test_pooling_averages_each_2x2_block_of_a_frame():
    policy = HierarchicalMemory(grid=8)
    n = 6  # <img>, then patches 0, 1, 8, 9 (one block) and 2 (the next block)
    keys = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 4).clone()
    store = Store(
        keys, keys.clone(), torch.zeros(1, 2, n, dtype=torch.long), torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.uint8).expand(1, 2, n),
        torch.full((1, 2, n), 3), torch.ones(1, 2, n, dtype=torch.long), torch.ones(1, 2, n, dtype=torch.bool),
    )
    pooled, patch = policy._pool(store, torch.tensor([-1, 0, 1, 8, 9, 2]))
    assert patch.tolist() == [-1, 0, 2]
    assert pooled.keys[0, 0, :, 0].tolist() == [0.0, 2.5, 5.0]
    assert pooled.count[0, 0].tolist() == [1, 4, 1]


def test_infinipot_gives_its_novelty_quota_to_patches_that_changed_since_the_newest_frame(model, stream):
    policy = InfiniPot(300, target=0.5, novelty_share=0.5, sink_tokens=4)
    memory, _ = feed(model, FullCache(), stream, 12)  # 781 entries, compressed below in one go
    policy._pixels = {f: patchify(stream.pixels(f), 4) for f in range(11)}
    policy.tokens(patchify(stream.pixels(11), 4), None)
    keep = policy.keep(memory)
    frames, patch = memory.frames(), memory.patch
    newest = patchify(stream.pixels(11), 4)
    old = (frames >= 0) & (frames < 11) & (patch >= 0) & (torch.arange(memory.length) >= 4)
    changed = torch.zeros(memory.length, dtype=torch.bool)
    for i in torch.nonzero(old).flatten().tolist():
        changed[i] = bool((patchify(stream.pixels(int(frames[i])), 4)[patch[i]] - newest[patch[i]]).abs().mean() > 0)
    markers = int(((frames >= 1) & (frames < 11) & (patch < 0)).sum())  # old <img> markers rank as novel
    quota = int(0.5 * (150 - 4 - 65)) - markers
    assert int(keep.sum()) == 150
    assert int((keep & changed).sum()) >= min(quota, int(changed.sum())) > 0
    assert bool(keep[:4].all()) and bool(keep[frames == 11].all())


def test_far_verdicts_need_enough_questions_and_a_reference_clear_of_chance():
    from pilot_experiments.metrics import Interval
    from pilot_experiments.studies.streaming.study import judge

    good_ref, at_chance = Interval(0.8, 0.7, 0.9), Interval(0.3, 0.2, 0.4)
    assert judge(Interval(0.95, 0.85, 1.05), good_ref, chance=0.25, n=100, bar=0.8) == "met"
    assert judge(Interval(0.5, 0.4, 0.6), good_ref, chance=0.25, n=100, bar=0.8) == "missed"
    assert judge(Interval(0.8, 0.6, 1.0), good_ref, chance=0.25, n=100, bar=0.8) == "not resolved"
    assert judge(Interval(0.95, 0.85, 1.05), good_ref, chance=0.25, n=12, bar=0.8) == "not resolved"
    assert judge(Interval(0.95, 0.85, 1.05), at_chance, chance=0.25, n=100, bar=0.8) == "not resolved"


def test_chance_rate_is_uniform_guessing_among_the_answers_of_each_kind():
    from pilot_experiments.studies.streaming.stream import StreamQuestion
    from pilot_experiments.studies.streaming.study import chance_rate

    def q(kind, answer):
        return StreamQuestion(0, kind, ("what",), (answer,), (0,), 200, "far")

    questions = [q("colour", "red"), q("colour", "blue"), q("count", "one"), q("count", "two"), q("count", "three"), q("count", "one")]
    assert chance_rate(questions) == pytest.approx((2 * 0.5 + 4 / 3) / 6)
