"""Evaluation on per-task test splits (DESIGN §2 step 6): greedy answers, scored per record.

A scorer is any ``f(prediction: str, reference: str) -> float`` in [0, 1]; ``SCORERS`` holds the
built-in ones, and ``evaluate`` takes a name or a callable.
"""

from __future__ import annotations

import re
import string
from typing import Callable, Sequence

import torch

from .._io import progress_bar
from ..data.encoder import Encoder

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
    """(generated answer, reference) for the record's last turn, by greedy decoding of it alone."""
    return greedy_answers(model, encoder, [record], max_new_tokens)[0]


def left_pad(prompts: list[dict], pad_token_id: int) -> dict:
    """Left-pad prompts into one batch (generation continues every row at the same column):
    ``input_ids``, ``attention_mask`` (B, T) and ``pixel_values`` for the rows with an image."""
    n = max(p["input_ids"].numel() for p in prompts)
    ids = torch.full((len(prompts), n), pad_token_id, dtype=torch.long)
    attn = torch.zeros(len(prompts), n, dtype=torch.long)
    for i, p in enumerate(prompts):
        k = p["input_ids"].numel()
        ids[i, n - k:], attn[i, n - k:] = p["input_ids"], 1
    batch = {"input_ids": ids, "attention_mask": attn}
    pix = [p["pixel_values"] for p in prompts if "pixel_values" in p]
    if pix:
        batch["pixel_values"] = torch.stack(pix)
    return batch


@torch.no_grad()
def greedy_answers(model, encoder: Encoder, records: Sequence[dict], max_new_tokens: int = 8) -> list[tuple[str, str]]:
    """[(generated answer, reference)] for ``records`` in one left-padded greedy ``generate``."""
    encoded = [encoder.encode_prompt(r) for r in records]
    batch = left_pad([p for p, _ in encoded], encoder.pad_token_id)
    device = next(model.parameters()).device
    kwargs = {k: v.to(device) for k, v in batch.items()}
    if "pixel_values" in kwargs:
        kwargs["pixel_values"] = kwargs["pixel_values"].to(next(model.parameters()).dtype)
    tok = encoder.tokenizer
    out = model.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=encoder.pad_token_id)
    width = batch["input_ids"].shape[1]
    return [(tok.decode(out[i, width:], skip_special_tokens=True).strip(), ref) for i, (_, ref) in enumerate(encoded)]


def evaluate(model, encoder: Encoder, records: Sequence[dict], scorer: str | Callable[[str, str], float] = "exact_match",
             max_new_tokens: int = 8, *, batch_size: int = 16, progress: bool = False, desc: str = "evaluate",
             before_batch: Callable[[Sequence[dict]], None] | None = None) -> dict:
    """Mean score over ``records`` and the individual answers [(prediction, reference)], in order.

    Greedy answers, ``batch_size`` prompts per left-padded ``generate`` (the same answers as one by
    one, up to float rounding of padded attention). Under ``torch.distributed`` each rank answers
    every world_size-th batch and every rank returns all answers. ``before_batch(records)`` runs
    before each batch's ``generate`` (e.g. to set a routed mixture of experts for its rows)."""
    import torch.distributed as dist

    fn = SCORERS[scorer] if isinstance(scorer, str) else scorer
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    starts = list(range(0, len(records), batch_size))
    mine = starts[rank::world]
    was_training = model.training
    model.eval()
    answers: dict[int, list] = {}
    try:
        for b0 in progress_bar(mine, desc=desc, unit="batch", progress=progress and rank == 0, leave=False):
            if before_batch is not None:
                before_batch(records[b0 : b0 + batch_size])
            answers[b0] = greedy_answers(model, encoder, records[b0 : b0 + batch_size], max_new_tokens)
    finally:
        model.train(was_training)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, answers)
        answers = {b0: a for g in gathered for b0, a in g.items()}
    ordered = [a for b0 in starts for a in answers[b0]]
    scores = [fn(pred, ref) for pred, ref in ordered]
    return {"score": sum(scores) / len(scores) if scores else float("nan"), "answers": ordered}


def evaluate_tasks(model, encoder: Encoder, tests: dict[str, Sequence[dict]], settings, *, progress: bool = False,
                   desc: str = "", evaluate_fn: Callable | None = None,
                   before_batch: Callable[[Sequence[dict]], None] | None = None) -> dict:
    """``evaluate`` (or ``evaluate_fn``, the caller's binding of it) on every task's test records
    with the run's ``eval`` settings (``EvalSettings``): {"scores": {task: score}, "examples":
    {task: first 5 answers}}."""
    out: dict = {"scores": {}, "examples": {}}
    for name, recs in tests.items():
        res = (evaluate_fn or evaluate)(model, encoder, recs, settings.scorer, settings.max_new_tokens,
                                        batch_size=settings.batch_size, progress=progress, desc=f"{desc}evaluate {name}",
                                        before_batch=before_batch)
        out["scores"][name] = res["score"]
        out["examples"][name] = res["answers"][:5]
    return out
