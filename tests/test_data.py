"""LLaVA JSON reader (bad records reported, skipped, counted) and answer-only labels."""

from __future__ import annotations

import json

import pytest

from PIL import Image

from adaptinf_fast.data import read_llava_json
from adaptinf_fast.data.encoder import Encoder
from tiny_models import IMAGE_TOKEN, word_tokenizer

Q = {"from": "human", "value": "<image>\nwhat colour is shown ?"}


def test_reader_reports_and_counts_bad_records(tmp_path):
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "blue.png")
    good = {"id": "a", "image": "blue.png", "conversations": [Q, {"from": "gpt", "value": "blue"}]}
    rows = [good,
            {"id": "b", "image": "gone.png", "conversations": [Q, {"from": "gpt", "value": "red"}]},
            {"id": "c", "conversations": "not a list"},
            {"id": "d", "conversations": [{"from": "human", "value": "count ?"}]},
            {"id": "a", "image": "blue.png", "conversations": [Q, {"from": "gpt", "value": "blue"}]},
            {"conversations": []},
            {"id": "e", "conversations": [{"from": "human", "value": "what is two ?"}, {"from": "gpt", "value": "two"}]}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    kept, report = read_llava_json(path, tmp_path)
    assert [r["id"] for r in kept] == ["a", "e"]
    assert report.total == 8 and report.kept == 2 and len(report.skipped) == 6
    assert report.reasons == {"missing image": 1, "malformed": 3, "no answer": 1, "duplicate id": 1}
    assert "kept 2, skipped 6" in str(report)
    (tmp_path / "list.json").write_text(json.dumps(rows))
    assert [r["id"] for r in read_llava_json(tmp_path / "list.json", tmp_path)[0]] == ["a", "e"]


def answer_words(tok, enc):
    return tok.convert_ids_to_tokens([t for t in enc["labels"].tolist() if t != -100])


def test_labels_only_on_answers_with_and_without_a_chat_template(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    rec = {"id": "x", "image": "red.png", "conversations": [
        Q, {"from": "gpt", "value": "red"}, {"from": "human", "value": "count ?"}, {"from": "gpt", "value": "two"}]}
    tok = word_tokenizer()
    enc = Encoder(tokenizer=tok, image_token_id=IMAGE_TOKEN, image_tokens=4, image_size=28, image_root=tmp_path)
    plain = enc.encode(rec)
    assert answer_words(tok, plain) == ["red", "</s>", "two", "</s>"]
    assert (plain["input_ids"] == IMAGE_TOKEN).sum() == 4 and plain["pixel_values"].shape == (1, 3, 28, 28)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}USER : {{ m['content'] }} "
                         "{% else %}ASSISTANT : {{ m['content'] }} </s> {% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}ASSISTANT : {% endif %}")
    templ = enc.encode(rec)
    assert answer_words(tok, templ) == ["red", "</s>", "two", "</s>"]
    prompt = tok.convert_ids_to_tokens([t for t, l in zip(templ["input_ids"].tolist(), templ["labels"].tolist())
                                        if l == -100 and t != IMAGE_TOKEN])
    assert prompt[:2] == ["USER", ":"] and prompt.count("ASSISTANT") == 2


def test_images_go_through_the_model_folders_image_processor(tmp_path):
    """A model folder with a CLIPImageProcessor (LLaVA-1.5's: resize the shortest edge, center-crop,
    CLIP-normalise): the encoder's pixels are the processor's; without one, our square resize."""
    import numpy as np
    import torch
    from transformers import CLIPImageProcessor

    from adaptinf_fast.data.encoder import image_processor_for

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(tmp_path / "wide.png")  # not square
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path / "m")
    proc = image_processor_for(tmp_path / "m")
    assert proc is not None and image_processor_for(tmp_path) is None
    rec = {"id": "w", "image": "wide.png", "conversations": [Q, {"from": "gpt", "value": "blue"}]}
    tok = word_tokenizer()
    common = dict(tokenizer=tok, image_token_id=IMAGE_TOKEN, image_tokens=4, image_size=16, image_root=tmp_path)
    ours = Encoder(**common).encode(rec)["pixel_values"]
    theirs = Encoder(**common, image_processor=proc).encode(rec)["pixel_values"]
    with Image.open(tmp_path / "wide.png") as im:
        want = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert theirs.shape == ours.shape == (1, 3, 16, 16)  # (images, 3, H, W)
    torch.testing.assert_close(theirs[0], want)
    assert not torch.allclose(theirs, ours, atol=1e-2)  # center-crop, not a squashing resize


def test_multi_image_records_are_validated_and_encoded_image_by_image(tmp_path):
    from PIL import Image

    from adaptinf_fast.data.llava import validate_records

    for name in ("a", "b"):
        Image.new("RGB", (20, 20), "red").save(tmp_path / f"{name}.png")
    q = {"from": "human", "value": "<image>\n<image>\nare these the same ?"}
    good = {"id": "g", "image": ["a.png", "b.png"], "conversations": [q, {"from": "gpt", "value": "yes"}]}
    short = {"id": "s", "image": ["a.png"], "conversations": [q, {"from": "gpt", "value": "yes"}]}
    missing = {"id": "m", "image": ["a.png", "gone.png"], "conversations": [q, {"from": "gpt", "value": "yes"}]}
    kept, report = validate_records([good, short, missing], tmp_path)
    assert [r["id"] for r in kept] == ["g"]
    why = dict(report.skipped)
    assert why["s"].startswith("image count") and why["m"].startswith("missing image") and "gone.png" in why["m"]
    enc = Encoder(tokenizer=word_tokenizer(), image_token_id=IMAGE_TOKEN, image_tokens=4, image_size=16,
                  image_root=tmp_path)
    from adaptinf_fast.data.encoder import ItemError

    for bad in (short, {**good, "image": ["a.png", "b.png", "a.png"]}):  # encoded directly: refused too
        with pytest.raises(ItemError, match="placeholder"):
            enc.encode(bad)
    item = enc.encode(good)
    assert (item["input_ids"] == IMAGE_TOKEN).sum() == 8 and item["pixel_values"].shape == (2, 3, 16, 16)
    from adaptinf_fast.data.encoder import collate

    batch = collate([item, enc.encode({"id": "t", "conversations": [{"from": "human", "value": "hi"},
                                                                   {"from": "gpt", "value": "no"}]}), item], 0)
    assert batch["pixel_values"].shape == (4, 3, 16, 16)  # every image of the batch, in order


def test_an_original_llava_checkpoint_is_refused_with_how_to_convert_it(tmp_path):
    import json

    from adaptinf_fast.lifelong.config import ModelSettings
    from adaptinf_fast.lifelong.models import check_loadable

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
                                                       "mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    with pytest.raises(ValueError, match="src/transformers/models/llava/convert_llava_weights_to_hf.py") as err:
        check_loadable(tmp_path)
    import importlib.util
    import re

    for module in re.findall(r"python -m ([\w.]+)", str(err.value)):  # a command we print must exist here
        assert importlib.util.find_spec(module) is not None, module
    with pytest.raises(ValueError, match="original LLaVA checkpoint"):
        ModelSettings(base=str(tmp_path))
