"""The task router (lifelong/routing.py): anchors are running means, similarities the mean of the
modalities' cosines in one GEMM, weights a softmax at the temperature; a CLIP folder's features
route the demo's separable tasks to their own anchors."""

from __future__ import annotations

import pytest
import torch

from adaptinf_fast.lifelong.routing import ClipFeatures, TaskRouter, clip_tokens, instruction


class Table:
    """A feature source that looks each record's features up (tests the router's arithmetic)."""

    centred = False

    def __call__(self, records, modalities):
        return {m: torch.stack([r[m] for r in records]) for m in modalities}


def rec(image, text):
    return {"image": torch.tensor(image, dtype=torch.float32), "text": torch.tensor(text, dtype=torch.float32)}


def test_anchors_are_running_means_and_similarity_the_mean_of_cosines():
    router = TaskRouter(Table(), temperature=0.5)
    a = [rec([1, 0], [0, 2]), rec([3, 0], [0, 4])]
    b = [rec([0, 1], [1, 0])]
    router.observe(0, a[:1])
    router.observe(0, a[1:])  # batch by batch = all at once
    router.observe(1, b)
    anchors = router.anchors()
    torch.testing.assert_close(anchors["image"], torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(anchors["text"], torch.tensor([[0.0, 3.0], [1.0, 0.0]]))
    q = [rec([1, 1], [0, 1])]
    f = router.features(q)
    # image: cos 1/sqrt2 to both; text: 1 to task 0, 0 to task 1
    want = torch.tensor([[(2**-0.5 + 1) / 2, (2**-0.5 + 0) / 2]])
    torch.testing.assert_close(router.similarity(f), want)
    w = router.weights(q)
    torch.testing.assert_close(w.sum(1), torch.ones(1))
    torch.testing.assert_close(w, torch.softmax(want / 0.5, 1))
    with pytest.raises(ValueError, match="observed before task 2"):
        router.observe(3, b)


def test_state_round_trip_and_modality_checks():
    router = TaskRouter(Table(), modalities=["text"])
    router.observe(0, [rec([1, 0], [0, 2])])
    other = TaskRouter(Table(), modalities=["text"])
    other.load_state_dict(router.state_dict())
    torch.testing.assert_close(other.anchors()["text"], router.anchors()["text"])
    with pytest.raises(ValueError, match="saved anchors are for"):
        TaskRouter(Table()).load_state_dict(router.state_dict())
    with pytest.raises(ValueError, match="non-empty subset"):
        TaskRouter(Table(), modalities=["audio"])
    with pytest.raises(ValueError, match="no task anchors"):
        TaskRouter(Table()).anchors()


def test_set_anchor_replaces_or_appends_a_learned_prototype():
    router = TaskRouter(Table(), temperature=0.5)
    router.observe(0, [rec([1, 0], [0, 2]), rec([3, 0], [0, 4])])
    router.set_anchor(1, {"image": torch.tensor([0.0, 5.0]), "text": torch.tensor([5.0, 0.0])})  # appended
    router.set_anchor(0, {"image": torch.tensor([0.0, 1.0]), "text": torch.tensor([1.0, 1.0])})  # replaced
    torch.testing.assert_close(router.anchors()["image"], torch.tensor([[0.0, 1.0], [0.0, 5.0]]))
    torch.testing.assert_close(router.anchors()["text"], torch.tensor([[1.0, 1.0], [5.0, 0.0]]))
    with pytest.raises(ValueError, match="set before task 2"):
        router.set_anchor(3, {"image": torch.zeros(2), "text": torch.zeros(2)})
    with pytest.raises(ValueError, match="an anchor needs"):
        router.set_anchor(0, {"text": torch.zeros(2)})


def test_clip_image_features_of_a_multi_image_record_are_the_mean_of_its_images(tmp_path):
    from adaptinf_fast.data.demo_tasks import make_tasks, vocabulary
    from adaptinf_fast.demo.clip import pretrained_clip

    data = make_tasks(tmp_path / "tasks", n_train=4, n_test=2, n_describe=2, extra=("pairs",))
    captions = [{**r, "image": str(tmp_path / "tasks" / r["image"])} for r in data["describe"]["train"]]
    clip = ClipFeatures(pretrained_clip(tmp_path, captions, vocabulary(data), epochs=1, say=lambda s: None),
                        image_root=tmp_path / "tasks")
    pair = data["pairs"]["train"][1]
    assert len(pair["image"]) == 2
    alone = [{**pair, "image": p} for p in pair["image"]]
    text_only = data["successor"]["train"][0]
    feats = clip([pair, *alone, text_only], ["image"])["image"]
    torch.testing.assert_close(feats[0], (feats[1] + feats[2]) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(feats[1], feats[2])
    size = clip.vision.config.image_size
    blank = clip.vision(pixel_values=torch.zeros(1, 3, size, size)).image_embeds[0]
    torch.testing.assert_close(feats[3], blank.detach(), rtol=1e-5, atol=1e-6)


def test_the_instruction_is_the_first_human_turn_without_its_image():
    r = {"conversations": [{"from": "human", "value": "<image>\nwhat colour is the square ?"},
                           {"from": "gpt", "value": "red"}, {"from": "human", "value": "and now ?"}]}
    assert instruction(r) == "what colour is the square ?"


def test_clip_tokens_end_in_one_eos_and_stop_at_77():
    from adaptinf_fast.data.demo_tasks import word_tokenizer

    tok = word_tokenizer(["a", "b"])
    ids, mask = clip_tokens(tok, ["a b", "a " * 100], tok.eos_token_id)
    assert ids.shape == (2, 77) and ids[0, 2] == tok.eos_token_id and mask[0].sum() == 3
    assert ids[1, 76] == tok.eos_token_id and mask[1].sum() == 77


@pytest.mark.slow
def test_a_tiny_clip_routes_the_demo_tasks_to_their_own_anchors(tmp_path):
    from adaptinf_fast.data.demo_tasks import make_tasks, vocabulary
    from adaptinf_fast.demo.clip import pretrained_clip

    data = make_tasks(tmp_path / "tasks", n_train=40, n_test=12, n_describe=60)
    captions = [{**r, "image": str(tmp_path / "tasks" / r["image"])} for r in data["describe"]["train"]]
    folder = pretrained_clip(tmp_path, captions, vocabulary(data), say=lambda s: None)
    router = TaskRouter(ClipFeatures(folder, image_root=tmp_path / "tasks"))
    names = ("digits", "colours", "counting", "successor")
    for i, name in enumerate(names):
        router.observe(i, data[name]["train"])
    for i, name in enumerate(names):
        w = router.weights(data[name]["test"])
        torch.testing.assert_close(w.sum(1), torch.ones(len(w)))
        assert (w.argmax(1) == i).float().mean() >= 0.9, name
