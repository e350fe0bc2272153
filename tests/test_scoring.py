"""Task metrics (lifelong/scoring.py): each as the benchmarks define it, on hand-made cases."""

from __future__ import annotations

import shutil

import pytest

from adaptinf_fast.lifelong import scoring


def test_vqa_soft_accuracy_and_normalisation():
    answers = ["two", "2", "2", "two dogs", "2", "3", "2", "two", "2", "2"]
    assert scoring.vqa_accuracy("2", answers) == 1.0  # "two" normalises to "2": 9 matches, capped at 1
    assert scoring.vqa_accuracy("3", answers) == pytest.approx(1 / 3)
    assert scoring.vqa_accuracy("Two dogs.", answers) == pytest.approx(1 / 3)  # "2 dogs" once
    assert scoring.vqa_accuracy("cat", answers) == 0.0
    assert scoring.vqa_normalize("The Red, square!") == "red square"
    assert scoring.vqa_normalize("1,000.5 dont") == "1000.5 don't"


def test_multiple_choice_letters():
    for text in ("B", "(B)", "B.", "B) a cat", "The answer is B.", "answer: (b)"):
        assert scoring.multiple_choice(text, "B") == 1.0, text
    assert scoring.multiple_choice("A cat", "B") == 0.0  # "A cat": the leading letter is A, followed by a space
    assert scoring.multiple_choice("because", "B") == 0.0 and scoring.multiple_choice("B", "no letter") == 0.0


def test_anls():
    assert scoring.anls("Hello World", ["hello world!"]) == pytest.approx(1 - 1 / 12)
    assert scoring.anls("completely different", ["abc"]) == 0.0  # NL above 0.5 counts 0
    assert scoring.anls("abc", ["xyz", "abd"]) == pytest.approx(1 - 1 / 3)  # the best of the answers


def test_grounding_boxes_in_llava_and_qwen_formats():
    ref = (0.1, 0.2, 0.5, 0.6)
    assert scoring.parse_box("[0.1, 0.2, 0.5, 0.6]") == ref
    assert scoring.parse_box("<|box_start|>(100,200),(500,600)<|box_end|>") == ref  # Qwen's 0..1000 grid
    assert scoring.parse_box("no box here") is None
    assert scoring.grounding("the cat is at [0.12, 0.2, 0.5, 0.6]", ref) == 1.0
    assert scoring.grounding("[0.5, 0.6, 0.9, 0.9]", ref) == 0.0
    assert scoring.iou((0, 0, 1, 1), (0, 0, 0.5, 1)) == pytest.approx(0.5)
    _, per, _ = scoring.score_task("grounding", ["[0.1, 0.2, 0.5, 0.6]"], ["x"], [{"box": list(ref)}])
    assert per == [1.0]


def test_grounding_in_absolute_pixels(tmp_path):
    """Qwen2.5-VL's answers: absolute pixel boxes in JSON, read against the record's image size."""
    from PIL import Image

    pred = '```json\n[{"bbox_2d": [64, 96, 320, 288], "label": "cat"}]\n```'
    assert scoring.parse_box(pred, (640, 480)) == (0.1, 0.2, 0.5, 0.6)
    rec = {"box": [0.1, 0.2, 0.5, 0.6], "image_size": [640, 480]}
    assert scoring.score_task("grounding_pixels", [pred], ["x"], [rec])[1] == [1.0]
    assert scoring.score_task("grounding", [pred], ["x"], [rec])[1] == [0.0]  # on the 0..1000 grid it misses
    Image.new("RGB", (640, 480)).save(tmp_path / "im.png")  # no image_size: the image file's own size
    rec = {"image": [str(tmp_path / "im.png")], "conversations": []}
    assert scoring.score_task("grounding_pixels", [pred], ['{"bbox_2d": [70, 90, 320, 290]}'], [rec])[1] == [1.0]
    assert scoring.score_task("grounding_pixels", ["[0, 0, 64, 48]"], ['[64, 96, 320, 288]'], [rec])[1] == [0.0]
    with pytest.raises(ValueError, match="image_size"):
        scoring.score_task("grounding_pixels", [pred], ["x"], [{"id": "a", "box": [0, 0, 1, 1]}])


def test_score_task_dispatch_and_unknown_metric():
    score, per, _ = scoring.score_task("vqa", ["2", "red"], ["2", "red"], [{"answers": ["2"] * 3}, {}])
    assert per == [1.0, pytest.approx(1 / 3)] and score == pytest.approx((1 + 1 / 3) / 2)
    score, per, _ = scoring.score_task(lambda p, r: float(p == r), ["a", "b"], ["a", "c"], [{}, {}])
    assert score == 0.5
    with pytest.raises(ValueError, match="expected one of"):
        scoring.score_task("bleu", ["a"], ["a"], [{}])


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR run on Java")
def test_caption_score_is_the_corpus_level_coco_metrics_and_their_mean():
    pytest.importorskip("pycocoevalcap")
    refs = [["a red square on a white background", "a red square"], ["three blue circles", "three circles"]]
    preds = ["a red square", "three circles"]
    scores = scoring.caption_scores(preds, refs)
    assert set(scoring.CAPTION_PARTS) <= set(scores)
    assert scores["mean"] == pytest.approx(sum(scores[k] for k in scoring.CAPTION_PARTS) / 7)
    assert scores["Bleu_1"] > 0.9 and scores["CIDEr"] > 1.0  # exact copies of references
    worse = scoring.caption_scores(["a green circle", "one square"], refs)
    assert all(worse[k] < scores[k] for k in scoring.CAPTION_PARTS)
    score, per, details = scoring.score_task("caption", preds, ["", ""], [{"answers": r} for r in refs])
    assert per is None and score == pytest.approx(scores["mean"]) and details["CIDEr"] == scores["CIDEr"]
