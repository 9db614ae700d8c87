"""SynthVis: determinism, disjoint splits, recoverable object patches, tasks, tokenizer."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilot_experiments import synthvis
from pilot_experiments.synthvis import BACKGROUND, SynthVisError, Tokenizer

TOK = Tokenizer()
WORDS = [w for w in TOK.words if w not in synthvis.SPECIAL_TOKENS]


def test_same_seed_gives_the_same_episode_and_other_splits_differ():
    a = synthvis.image_episode("train", 3, 7)
    b = synthvis.image_episode("train", 3, 7)
    assert (a.pixels == b.pixels).all() and a.qas == b.qas and a.scenes == b.scenes
    others = [synthvis.image_episode(split, 3, 7) for split in ("val", "test")] + [synthvis.image_episode("train", 4, 7)]
    assert all(not (o.pixels == a.pixels).all() for o in others)


def test_object_patches_are_exactly_where_the_object_is_drawn():
    for i in range(20):
        ep = synthvis.image_episode("test", 0, i, image_px=64, patch_px=4)
        scene, img = ep.scenes[0], (ep.pixels[0] * 255).round().numpy().astype(np.uint8)
        patches = img.reshape(3, 16, 4, 16, 4).transpose(1, 3, 0, 2, 4).reshape(256, -1)
        drawn = (patches != BACKGROUND).any(-1)
        union = np.zeros(256, dtype=bool)
        for obj in scene.objects:
            idx = scene.object_patches(obj.ident)
            assert len(idx) == obj.side**2
            assert drawn[idx].sum() >= obj.side**2 - 4  # corners of round shapes may stay empty
            union[idx] = True
        assert not (drawn & ~union).any()


def test_caption_lists_every_object_and_parses_back_into_facts():
    ep = synthvis.image_episode("test", 0, 1, max_objects=4)
    caption = next(q for q in ep.qas if q.kind == "caption")
    facts = synthvis.caption_facts(caption.answer)
    assert len(facts) == 4 * len(ep.scenes[0].objects)
    for obj in ep.scenes[0].objects:
        assert (obj.shape, "colour", obj.colour) in facts


def test_caption_wordings_differ_in_function_words_only():
    import numpy as np

    scene = synthvis.image_episode("test", 0, 1, max_objects=4).scenes[0]
    wordings = {synthvis.caption_words(scene, np.random.default_rng(seed)) for seed in range(20)}
    assert len(wordings) > 1
    tok = synthvis.Tokenizer()
    canonical = synthvis.caption_words(scene)
    for words in wordings:
        assert sorted(synthvis.caption_facts(words)) == sorted(synthvis.caption_facts(canonical))
        content = [w for w in words if tok.is_visual_content(tok.ids[w])]
        assert content == [w for w in canonical if tok.is_visual_content(tok.ids[w])]


def test_vqa_answers_follow_from_the_scene():
    for i in range(30):
        ep = synthvis.image_episode("val", 1, i)
        scene = ep.scenes[0]
        for qa in ep.qas:
            if qa.kind == "colour":
                shape = qa.question[4]
                assert [o.colour for o in scene.objects if o.shape == shape] == [qa.answer[0]]
            if qa.kind == "count":
                plural = qa.question[2]
                n = sum(synthvis.PLURALS[o.shape] == plural for o in scene.objects)
                assert qa.answer == (synthvis.NUMBERS[n],)


def test_relations_name_a_side_the_object_lies_wholly_on_among_the_options_asked():
    wholly = {
        "left": lambda a, b: a.col + a.side <= b.col, "right": lambda a, b: b.col + b.side <= a.col,
        "above": lambda a, b: a.row + a.side <= b.row, "below": lambda a, b: b.row + b.side <= a.row,
    }
    asked = set()
    for i in range(60):
        ep = synthvis.image_episode("val", 1, i, max_objects=4)
        for qa in (q for q in ep.qas if q.kind == "relation"):
            a, b = (next(o for o in ep.scenes[0].objects if o.shape == qa.question[k]) for k in (2, -2))
            options = qa.question[3], qa.question[5]
            assert qa.question[4] == "or" and qa.answer[0] in options and wholly[qa.answer[0]](a, b)
            asked.add((options, qa.answer[0]))
    # both axes, both answers of each, and each answer as the first option and as the second
    assert len(asked) == 8


@pytest.mark.parametrize(("image_px", "max_objects"), [(32, 1), (48, 4), (64, 4), (96, 6)])  # the presets' pictures and the default
def test_objects_sit_clear_of_the_region_boundaries(image_px, max_objects):
    grid = image_px // 4
    for i in range(40):
        for obj in synthvis.image_episode("train", 2, i, image_px=image_px, max_objects=max_objects).scenes[0].objects:
            for centre in obj.centre:
                assert min(abs(centre - grid / 3), abs(centre - 2 * grid / 3)) >= grid / 16


def test_visual_tokens_dominate_text_tokens():
    ep = synthvis.image_episode("test", 0, 0, image_px=64, patch_px=4)
    n_visual = (ep.pixels.shape[-1] // 4) ** 2
    assert n_visual >= 256 and all(len(q.question) + len(q.answer) < 50 for q in ep.qas)
    big = synthvis.image_episode("test", 0, 0, image_px=160, patch_px=4, max_objects=8)
    assert (big.pixels.shape[-1] // 4) ** 2 == 1600
    video = synthvis.video_episode("test", 0, 0, n_frames=16, frame_px=32)
    assert video.pixels.shape[0] * (32 // 4) ** 2 >= 1000


def test_video_events_and_temporal_answers_are_consistent():
    video = synthvis.stream(seed=0, n_frames=3000)
    events = video.events()
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    rng = np.random.default_rng(0)
    for qa in synthvis.video_questions(video, rng):
        shape = qa.question[4] if qa.kind != "first" else qa.answer[0]
        track = next(t for t in video.tracks if t.shape == shape)
        if qa.kind == "appear-colour":
            assert qa.event_frames == (track.appear,)
            assert video.scene(track.appear).objects[[o.shape for o in video.scene(track.appear).objects].index(shape)].colour == qa.answer[0]
        if qa.kind == "first":
            assert track.appear == min(qa.event_frames)
    with pytest.raises(SynthVisError, match="outside"):
        video.scene(3000)


@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=30))
def test_tokenizer_round_trips_any_word_sequence(words):
    assert TOK.decode(TOK.encode(words)) == " ".join(words)


def test_word_classes_separate_visual_content_from_function_words():
    for word in ("red", "circle", "circles", "large", "striped", "left", "three", "first"):
        assert TOK.is_visual_content(TOK.ids[word]), word
    for word in ("the", "a", "is", "at", "what", ".", "<eos>"):
        assert not TOK.is_visual_content(TOK.ids[word]), word
    assert TOK.visual_content_mask().sum() == sum(TOK.is_visual_content(i) for i in range(len(TOK)))
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id, TOK.ans_id, TOK.img_id) == (0, 1, 2, 3, 4)


def test_unknown_words_are_rejected_with_the_offending_word():
    with pytest.raises(SynthVisError, match="banana"):
        TOK.encode("the banana")
