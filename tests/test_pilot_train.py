"""Training: determinism, the smoke preset reaching its bar, the checkpoint cache, the CLI and
the results writer."""

import json

import pytest
import torch

from pilot_experiments import synthvis
from pilot_experiments import train as T
from pilot_experiments.__main__ import main


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(T.CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def smoke(cache_dir):
    return T.load_or_train("draft", "smoke", show_progress=False)


def test_same_seed_gives_the_same_weights():
    tc = T.train_config("smoke", steps=3, eval_episodes=1)
    a = T.train("draft", tc, show_progress=False)
    b = T.train("draft", tc, show_progress=False)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    c = T.train("draft", T.train_config("smoke", steps=3, eval_episodes=1, seed=1), show_progress=False)
    assert not torch.equal(a.model.embed.weight, c.model.embed.weight)


def test_smoke_training_reaches_its_bar(smoke):
    tc = T.train_config("smoke")
    assert all(T.meets_bar(smoke.metrics, tc).values()), smoke.metrics
    assert smoke.curve["loss"][-1] < smoke.curve["loss"][0]


def test_checkpoint_is_cached_and_reloads_the_same_model(smoke, cache_dir):
    path = T.checkpoint_path("draft", T.train_config("smoke"))
    assert path.exists() and path.parent == cache_dir
    again = T.load_or_train("draft", "smoke")
    for pa, pb in zip(smoke.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(pa, pb)
    assert again.metrics == smoke.metrics


def test_packed_questions_are_trained_as_they_are_evaluated():
    """Teacher-forced logits of every question in a packed training sequence equal those of the
    question asked alone after the pictures, as evaluation asks it: no question sees another."""
    from pilot_experiments.model import LVLM, config_for

    tok = synthvis.Tokenizer()
    torch.manual_seed(0)
    model = LVLM(config_for("draft", len(tok))).eval()
    ep = synthvis.image_episode("val", 0, 3, image_px=32, max_objects=3)
    batch = T.pack([ep], tok)
    inputs = model.embed_prompt(batch.pixels, batch.times, batch.text)
    bias = T.isolate_questions(inputs, batch)
    with torch.no_grad():
        packed = model(inputs, attn_bias=bias).logits[0, inputs.length - batch.text.shape[1] :]
        start = 0
        for qa in ep.qas:
            ids = tok.encode(qa.question) + [tok.ans_id] + tok.encode(qa.answer) + [tok.eos_id]
            alone = model(model.embed_prompt(batch.pixels, batch.times, torch.tensor([ids]))).logits[0, -len(ids) :]
            torch.testing.assert_close(packed[start : start + len(ids)], alone, atol=1e-4, rtol=1e-4)
            start += len(ids)
    assert len(ep.qas) > 3


def test_grounding_marks_the_objects_each_word_is_about():
    """Every grounded row of the mask sits on a question word that names a colour or shape of the
    objects it marks, or where a caption's content word (or whether another phrase follows) is
    predicted, and is in the group that says which; only visual tokens are marked, or <bos> alone
    for a count of zero or the end of a caption."""
    from pilot_experiments.kvcache import VISUAL
    from pilot_experiments.model import LVLM, config_for

    tok = synthvis.Tokenizer()
    model = LVLM(config_for("draft", len(tok))).eval()
    tc = T.train_config("cpu")
    for family in T.FAMILIES:
        episodes = [T.family_episode(family, "val", 0, i, tc) for i in range(2)]
        batch = T.pack(episodes, tok)
        inputs = model.embed_prompt(batch.pixels, batch.times, batch.text)
        start = inputs.length - batch.text.shape[1]
        mask, groups = T.grounding_mask(episodes, start, (start - 1) // batch.pixels.shape[1], inputs.length)
        assert bool(mask.any(-1).any())
        assert torch.equal(mask.any(-1), groups > 0)
        on_bos = mask[:, :, 0]
        assert not bool(mask[:, :, 1:][:, :, inputs.modality[0, 1:] != VISUAL].any())
        assert not bool(mask[on_bos][:, 1:].any())  # <bos> is marked alone
        assert bool(on_bos.any()) == (family == "image")  # these image episodes ask for a shape that is absent
        for b, ep in enumerate(episodes):
            for row in mask[b].any(-1).nonzero().flatten().tolist():
                here, predicted = (tok.words[int(batch.text[b, i - start])] for i in (row, row + 1))
                group = T.GROUNDING_GROUPS[int(groups[b, row]) - 1]
                if group == "caption":  # a content word, or whether another phrase follows
                    assert tok.is_visual_content(tok.ids[predicted]) or predicted in (*synthvis.CAPTION_SEPARATORS, *synthvis.CAPTION_ARTICLES, "<eos>"), (here, predicted)
                else:
                    assert tok.word_class(tok.ids[here]) == group, (here, group)
                if bool(on_bos[b, row]):  # a count of zero, or the end of a caption
                    assert (here in synthvis.PLURALS.values() and predicted == "are") or (group == "caption" and predicted in (".", "<eos>")), (here, predicted)
            for qa in ep.qas:
                targets = T.grounding_targets(ep, qa)
                if qa.kind == "caption":  # the content words of phrase k point at the object they describe,
                    answer = (*qa.answer, "<eos>")  # as do its article and the separator before it
                    objects = [described(ep.scenes[0], answer[k : k + synthvis.CAPTION_PHRASE]) for k in range(0, len(qa.answer), synthvis.CAPTION_PHRASE)]
                    for offset, refs in targets:
                        phrase, slot = divmod(offset, synthvis.CAPTION_PHRASE)
                        if slot not in synthvis.CAPTION_CONTENT_SLOTS:  # the separator before the next phrase, or its article (or <eos>)
                            following = phrase + (slot == synthvis.CAPTION_PHRASE - 1)
                            assert answer[offset] in (*synthvis.CAPTION_SEPARATORS, *synthvis.CAPTION_ARTICLES, "<eos>")
                            assert [ident for _, ident in refs] == objects[following : following + 1]
                            continue
                        ((unit, ident),) = refs
                        assert ident == objects[phrase]
                    assert sum(not refs for _, refs in targets) == 2  # the last separator and <eos> point at nothing
                    continue
                if qa.kind == "count" and qa.answer == ("zero",):
                    assert [qa.question[offset] for offset, refs in targets if not refs] == [qa.question[2]]
                for offset, refs in targets:
                    word = qa.question[len(qa.question) + offset]
                    for unit, ident in refs:
                        obj = next(o for o in ep.scenes[unit].objects if o.ident == ident)
                        assert word in (obj.colour, obj.shape, synthvis.PLURALS[obj.shape])


def described(scene: synthvis.Scene, phrase: tuple[str, ...]) -> int:
    """The ident of the object a caption phrase describes: its size, colour, texture, shape and region."""
    _, size, colour, texture, shape, _, _, row, col, _ = phrase
    (ident,) = {o.ident for o in scene.objects if (o.size, o.colour, o.texture, o.shape, *scene.region(o)) == (size, colour, texture, shape, row, col)}
    return ident


def test_routing_looks_from_each_answer_at_its_questions_first_and_last_naming_word():
    """The second hop: every routed row is the <ans> of a non-caption question; head 0's row marks
    the first word of that question that the first hop grounds and head 1's the last."""
    tok = synthvis.Tokenizer()
    tc = T.train_config("cpu")
    two_words = 0
    for family in T.FAMILIES:
        episodes = [T.family_episode(family, "val", 0, i, tc) for i in range(3)]
        batch = T.pack(episodes, tok)
        start = 5  # any number of tokens before the text
        length = start + batch.text.shape[1]
        route = T.routing_masks(episodes, start, length)
        for b, ep, qa, ans in T.packed_questions(episodes, start):
            assert int(batch.text[b, ans - start]) == tok.ans_id
            if qa.kind == "caption":
                assert not bool(route[:, b, ans].any())
                continue
            named = [ans + offset for offset, _ in T.grounding_targets(ep, qa)]
            assert [route[k, b, ans].nonzero().flatten().tolist() for k in (0, 1)] == [[named[0]], [named[-1]]]
            assert all(tok.word_class(int(batch.text[b, i - start])) in ("colour", "shape") for i in named)
            assert ans - len(qa.question) <= min(named) and max(named) < ans
            two_words += named[0] != named[-1]
        rows = route.any(-1).nonzero()
        assert all(int(batch.text[b, i - start]) == tok.ans_id for _, b, i in rows.tolist())
    assert two_words > 0


def test_answers_look_at_the_objects_of_their_first_and_last_naming_words():
    """The third hop: every marked row is the <ans> of a non-caption question; head 0's row holds
    the objects of the first naming word and head 1's those of the last, which differ exactly when
    the question names two objects (a relation, "which came first"); a count of zero marks <bos>."""
    tok = synthvis.Tokenizer()
    tc = T.train_config("cpu")
    kinds = set()
    for family in T.FAMILIES:
        episodes = [T.family_episode(family, "val", 0, i, tc) for i in range(3)]
        batch = T.pack(episodes, tok)
        unit_len = 1 + (batch.pixels.shape[-2] // 4) * (batch.pixels.shape[-1] // 4)  # <img> and the 4-pixel patches
        start = 1 + batch.pixels.shape[1] * unit_len
        length = start + batch.text.shape[1]
        first, first_groups = T.grounding_mask(episodes, start, unit_len, length)
        masks, groups = T.answer_masks(first, first_groups, T.routing_masks(episodes, start, length))
        for b, ep, qa, ans in T.packed_questions(episodes, start):
            if qa.kind == "caption":
                assert not bool(masks[:, b, ans].any())
                continue
            named = [ans + offset for offset, _ in T.grounding_targets(ep, qa)]
            assert torch.equal(masks[0, b, ans], first[b, named[0]]) and torch.equal(masks[1, b, ans], first[b, named[-1]])
            assert torch.equal(masks[0, b, ans], masks[1, b, ans]) == (len(named) == 1), qa
            assert bool(masks[0, b, ans, 0]) == (qa.answer == ("zero",))
            named_by = tok.word_class(int(batch.text[b, named[0] - start]))
            assert T.GROUNDING_GROUPS[int(groups[b, ans]) - 1] == named_by
            kinds.add(qa.kind)
        assert int(masks.any(-1).sum()) == 2 * sum(qa.kind != "caption" for ep in episodes for qa in ep.qas)
        assert torch.equal(groups > 0, masks[0].any(-1))
    assert {"relation", "first", "shape", "count"} <= kinds


def test_grounding_loss_falls_as_attention_moves_onto_the_objects():
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[0, 3, [1, 2]] = True
    uniform = torch.full((1, 4, 6), 1 / 6)
    focused = torch.zeros(1, 4, 6)
    focused[0, :, 1] = 1.0
    assert float(T.grounding_loss(focused, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(T.grounding_loss(uniform, mask)) == pytest.approx(-torch.log(torch.tensor(2 / 6)).item())


def test_grounding_on_the_grounded_rows_alone_loses_nothing():
    """The loss on the rows `grounded_rows` picks equals the loss on the whole T x T weights, for
    every hop of a real batch, with rows of different counts per sequence."""
    tok = synthvis.Tokenizer()
    episodes = [T.family_episode("image", "val", 0, i, T.train_config("cpu")) for i in range(4)]
    batch = T.pack(episodes, tok)
    unit_len = 1 + (batch.pixels.shape[-2] // 4) ** 2
    start = 1 + unit_len
    length = start + batch.text.shape[1]
    first, groups = T.grounding_mask(episodes, start, unit_len, length)
    second = T.routing_masks(episodes, start, length)
    third, third_groups = T.answer_masks(first, groups, second)
    rows = T.grounded_rows(first | second.any(0))
    counts = (first | second.any(0)).any(-1).sum(1)
    assert rows.shape == (len(episodes), int(counts.max())) and len(set(counts.tolist())) > 1
    attn = torch.softmax(torch.randn(len(episodes), length, length), dim=-1)
    for mask, group in ((first, groups), (second[0], None), (third[1], third_groups)):
        on_rows = T.grounding_loss(T.take_rows(attn, rows), T.take_rows(mask, rows), None if group is None else group.gather(1, rows))
        torch.testing.assert_close(on_rows, T.grounding_loss(attn, mask, group))
    assert int(T.take_rows(first, rows).any(-1).sum()) == int(first.any(-1).sum())


def test_grounding_captions_and_questions_weigh_the_same_and_so_do_the_question_groups():
    caption, shape, colour = (1 + T.GROUNDING_GROUPS.index(g) for g in ("caption", "shape", "colour"))
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, :5, 1] = True  # three caption rows and two shape-word rows find their object
    mask[0, 5, 2] = True  # one colour-word row misses its own
    attn = torch.zeros(1, 6, 6)
    attn[0, :, 1] = 0.5
    attn[0, :, 0] = 0.5
    lost = -torch.log(torch.tensor(1e-6)).item()
    half = -torch.log(torch.tensor(0.5)).item()
    assert float(T.grounding_loss(attn, mask)) == pytest.approx((5 * half + lost) / 6)
    groups = torch.tensor([[caption] * 3 + [shape] * 2 + [colour]])
    assert float(T.grounding_loss(attn, mask, groups)) == pytest.approx((half + (half + lost) / 2) / 2)
    only_questions = torch.tensor([[shape] * 5 + [colour]])
    assert float(T.grounding_loss(attn, mask, only_questions)) == pytest.approx((half + lost) / 2)


def test_answer_tokens_know_their_question_kind_and_every_kind_weighs_alike():
    tok = synthvis.Tokenizer()
    episodes = [synthvis.image_episode("val", 0, i, image_px=32, max_objects=3) for i in range(4)]
    batch = T.pack(episodes, tok)
    for b, ep in enumerate(episodes):
        kinds = [synthvis.QA_KINDS[k - 1] for k in batch.kind[b][batch.loss_mask[b]].tolist()]
        assert kinds == [qa.kind for qa in ep.qas for _ in range(len(qa.answer) + 1)]
    assert bool((batch.kind[batch.text == tok.pad_id] == 0).all())
    caption, colour, count = (1 + synthvis.QA_KINDS.index(k) for k in ("caption", "colour", "count"))
    values = torch.tensor([1.0] * 4 + [2.0] * 3 + [6.0])  # a caption's tokens, three colour answers, one count
    groups = torch.tensor([caption] * 4 + [colour] * 3 + [count])
    assert float(T.caption_half_mean(values, groups, caption)) == pytest.approx((1 + (2 + 6) / 2) / 2)
    assert float(T.caption_half_mean(values[4:], groups[4:], caption)) == pytest.approx((2 + 6) / 2)
    assert float(T.caption_half_mean(values[:4], groups[:4], caption)) == pytest.approx(1.0)


def test_checkpoint_key_changes_with_the_config():
    a = T.checkpoint_key("draft", T.train_config("smoke"))
    assert a == T.checkpoint_key("draft", T.train_config("smoke"))
    assert a != T.checkpoint_key("draft", T.train_config("smoke", seed=5))
    assert a != T.checkpoint_key("target", T.train_config("smoke"))


def test_caption_f1_scores_attribute_facts():
    from pilot_experiments.synthvis import Scene, WorldObject

    objects = (WorldObject(0, "square", "red", "small", "solid", 0, 0), WorldObject(1, "circle", "blue", "large", "striped", 12, 12))
    truth = synthvis.caption_words(Scene(16, objects))
    assert T.caption_f1(truth, truth) == 1.0
    recoloured = (WorldObject(0, "square", "green", "small", "solid", 0, 0), objects[1])
    assert T.caption_f1(synthvis.caption_words(Scene(16, recoloured)), truth) == pytest.approx(7 / 8)
    assert T.caption_f1(("a",), truth) == 0.0


def test_train_cli_writes_results_from_the_cached_model(smoke, tmp_path):
    main(["train", "--size", "draft", "--preset", "smoke", "--results-dir", str(tmp_path)])
    data = json.loads((tmp_path / "train-draft" / "smoke-cpu.json").read_text())
    assert data["study"] == "train-draft" and data["preset"] == "smoke" and data["seed"] == 0
    assert data["metrics"]["params"]["total"] == smoke.params["total"]
    assert data["torch"] == torch.__version__ and "CPU" in data["device"]
    assert (tmp_path / "train-draft" / "smoke-cpu.svg").stat().st_size > 1000
    assert (tmp_path / "train-draft" / "smoke-cpu.md").read_text().startswith("<!-- generated")


def test_model_special_ids_match_the_tokenizer():
    from pilot_experiments.model import SPECIAL_IDS

    tok = synthvis.Tokenizer()
    assert SPECIAL_IDS == {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id, "ans": tok.ans_id, "img": tok.img_id}


def test_cpu_training_runs_on_the_pinned_thread_count_and_restores_the_callers(monkeypatch) -> None:
    from pilot_experiments import train as train_module

    seen = []
    monkeypatch.setattr(train_module, "_train", lambda *args, **kwargs: seen.append(torch.get_num_threads()) or "done")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_module.train("draft", train_module.train_config("smoke")) == "done"
        assert seen == [train_module.TRAIN_THREADS] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
