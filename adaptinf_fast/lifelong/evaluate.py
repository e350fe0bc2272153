"""Evaluation on per-task test splits (DESIGN §2 step 6): greedy answers, scored per record.

A scorer is any ``f(prediction: str, reference: str) -> float`` in [0, 1]; ``SCORERS`` holds the
built-in ones, and ``evaluate`` takes a name or a callable.
"""

from __future__ import annotations

import re
import string
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..features.batching import Encoder

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def first_word_match(prediction: str, reference: str) -> float:
    """For one-word answers: the first word of the prediction matches (ignores trailing text)."""
    words = normalize_answer(prediction).split()
    return float(bool(words) and words[0] == normalize_answer(reference))


SCORERS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "first_word": first_word_match}


@torch.no_grad()
def greedy_answer(model, encoder: Encoder, record: dict, max_new_tokens: int = 8) -> tuple[str, str]:
    """(generated answer, reference) for the record's last turn, by greedy decoding."""
    prompt, reference = encoder.encode_prompt(record)
    device = next(model.parameters()).device
    ids = prompt["input_ids"][None].to(device)
    kwargs = {}
    if "pixel_values" in prompt:
        kwargs["pixel_values"] = prompt["pixel_values"][None].to(device=device, dtype=next(model.parameters()).dtype)
    tok = encoder.tokenizer
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=encoder.pad_token_id, **kwargs)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip(), reference


def evaluate(model, encoder: Encoder, records: Sequence[dict], scorer: str | Callable[[str, str], float] = "exact_match",
             max_new_tokens: int = 8, progress: bool = False, desc: str = "evaluate") -> dict:
    """Mean score over ``records`` and the individual answers [(prediction, reference)]."""
    fn = SCORERS[scorer] if isinstance(scorer, str) else scorer
    was_training = model.training
    model.eval()
    try:
        answers = [greedy_answer(model, encoder, r, max_new_tokens)
                   for r in tqdm(records, desc=desc, unit="record", disable=not progress, leave=False)]
    finally:
        model.train(was_training)
    scores = [fn(pred, ref) for pred, ref in answers]
    return {"score": sum(scores) / len(scores) if scores else float("nan"), "answers": answers}
