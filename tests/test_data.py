"""LLaVA JSON reader (bad records reported, skipped, counted) and answer-only labels."""

from __future__ import annotations

import json

from PIL import Image

from adaptinf_fast.data import read_llava_json
from adaptinf_fast.features.batching import Encoder
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
    assert (plain["input_ids"] == IMAGE_TOKEN).sum() == 4 and plain["pixel_values"].shape == (3, 28, 28)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}USER : {{ m['content'] }} "
                         "{% else %}ASSISTANT : {{ m['content'] }} </s> {% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}ASSISTANT : {% endif %}")
    templ = enc.encode(rec)
    assert answer_words(tok, templ) == ["red", "</s>", "two", "</s>"]
    prompt = tok.convert_ids_to_tokens([t for t, l in zip(templ["input_ids"].tolist(), templ["labels"].tolist())
                                        if l == -100 and t != IMAGE_TOKEN])
    assert prompt[:2] == ["USER", ":"] and prompt.count("ASSISTANT") == 2
