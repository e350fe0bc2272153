"""Evaluation: answer normalisation, scorers, and greedy answers equal to a manual greedy loop."""

from __future__ import annotations

import pytest
import torch

from adaptinf_fast.features.batching import Encoder
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
    from adaptinf_fast.features.batching import ItemError

    with pytest.raises(ItemError, match="must end with a 'gpt' turn"):
        Encoder(tokenizer=word_tokenizer()).encode_prompt({"conversations": [{"from": "human", "value": "two"}]})
