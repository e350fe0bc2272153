"""Evaluation: answer normalisation, scorers, and greedy answers equal to a manual greedy loop."""

from __future__ import annotations

import pytest
import torch

from adaptinf_fast.data.encoder import Encoder
from adaptinf_fast.lifelong.evaluate import evaluate, exact_match, first_word_match, greedy_answer, normalize_answer
from tiny_models import tiny_llama, word_tokenizer


def test_normalisation_and_scorers():
    assert normalize_answer("  The Red, square! ") == "red square"
    assert exact_match("A circle.", "circle") == 1.0 and exact_match("circle two", "circle") == 0.0
    assert first_word_match("circle two", "circle") == 1.0 and first_word_match("", "circle") == 0.0


def test_greedy_answer_is_real_generation():
    model = tiny_llama(seed=4)
    model.eval()
    tok = word_tokenizer()
    enc = Encoder(tokenizer=tok)
    rec = {"id": 1, "conversations": [{"from": "human", "value": "what is the digit ?"}, {"from": "gpt", "value": "two"}]}
    pred, ref = greedy_answer(model, enc, rec, max_new_tokens=4)
    assert ref == "two"
    prompt, _ = enc.encode_prompt(rec)
    ids = prompt["input_ids"][None]
    with torch.no_grad():
        for _ in range(4):  # manual greedy decoding
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
            if nxt == tok.eos_token_id:
                break
    assert pred == tok.decode(ids[0, prompt["input_ids"].numel():], skip_special_tokens=True).strip()
    out = evaluate(model, enc, [rec, rec], scorer=lambda p, r: 0.25)
    assert out["score"] == 0.25 and len(out["answers"]) == 2


def test_record_must_end_with_an_answer():
    from adaptinf_fast.data.encoder import ItemError

    with pytest.raises(ItemError, match="must end with a 'gpt' turn"):
        Encoder(tokenizer=word_tokenizer()).encode_prompt({"conversations": [{"from": "human", "value": "two"}]})


def test_batched_left_padded_answers_equal_one_by_one(tmp_path):
    """LLaVA prompts of different lengths, with and without images, in left-padded batches: the
    same greedy answers as decoding each record alone."""
    from adaptinf_fast.data.demo_tasks import make_tasks, vocabulary, word_tokenizer as demo_tokenizer
    from adaptinf_fast.demo.model import tiny_llava

    data = make_tasks(tmp_path / "tasks", n_train=4, n_test=6, n_describe=0)
    tok = demo_tokenizer(vocabulary(data))
    torch.manual_seed(0)
    model = tiny_llava(tok, hidden=32, layers=2, vision_layers=1)
    model.eval()
    enc = Encoder.for_model(model, tok, image_root=tmp_path / "tasks")
    records = data["colours"]["test"] + data["successor"]["test"] + data["counting"]["test"]
    lengths = {enc.encode_prompt(r)[0]["input_ids"].numel() for r in records}
    assert len(lengths) > 1  # padding really happens
    alone = [greedy_answer(model, enc, r, max_new_tokens=5) for r in records]
    for batch_size in (4, 7, 64):
        got = evaluate(model, enc, records, max_new_tokens=5, batch_size=batch_size)["answers"]
        assert got == alone, batch_size
    assert any(pred for pred, _ in alone)  # the model does generate something
