"""Evaluation on per-task test splits (DESIGN §2 step 6): greedy answers, scored by the task's metric.

A metric is a name of ``scoring.METRICS`` (exact match, VQA soft accuracy, multiple choice, ANLS,
the corpus-level caption score, grounding at IoU > 0.5) or any ``f(prediction, reference) -> float``
in [0, 1]; ``evaluate`` takes either.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .._io import progress_bar
from ..data.encoder import Encoder, model_inputs
from .scoring import METRICS, exact_match, first_word_match, normalize_answer, score_task

SCORERS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "first_word": first_word_match}


@torch.no_grad()
def greedy_answer(model, encoder: Encoder, record: dict, max_new_tokens: int = 8) -> tuple[str, str]:
    """(generated answer, reference) for the record's last turn, by greedy decoding of it alone."""
    return greedy_answers(model, encoder, [record], max_new_tokens)[0]


@torch.no_grad()
def greedy_answers(model, encoder: Encoder, records: Sequence[dict], max_new_tokens: int = 8) -> list[tuple[str, str]]:
    """[(generated answer, reference)] for ``records`` in one left-padded greedy ``generate``."""
    encoded = [encoder.encode_prompt(r) for r in records]
    batch = encoder.collate_prompts([p for p, _ in encoded])
    tok = encoder.tokenizer
    out = model.generate(**model_inputs(batch, model), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=encoder.pad_token_id)
    width = batch["input_ids"].shape[1]
    return [(tok.decode(out[i, width:], skip_special_tokens=True).strip(), ref) for i, (_, ref) in enumerate(encoded)]


def evaluate(model, encoder: Encoder, records: Sequence[dict], scorer: str | Callable[[str, str], float] = "exact_match",
             max_new_tokens: int = 8, *, batch_size: int = 16, progress: bool = False, desc: str = "evaluate",
             before_batch: Callable[[Sequence[dict]], None] | None = None) -> dict:
    """The task's score over ``records`` (``scorer``: a metric name or a function), the individual
    answers [(prediction, reference)] in order, and the metric's details (e.g. the caption parts).

    Greedy answers, ``batch_size`` prompts per left-padded ``generate`` (the same answers as one by
    one, up to float rounding of padded attention). Under ``torch.distributed`` each rank answers
    every world_size-th batch and every rank returns all answers. ``before_batch(records)`` runs
    before each batch's ``generate`` (e.g. to set a routed mixture of experts for its rows)."""
    import torch.distributed as dist

    if isinstance(scorer, str) and scorer not in METRICS:
        raise ValueError(f"metric is {scorer!r}; expected one of {METRICS}")
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
    score, _, details = score_task(scorer, [p for p, _ in ordered], [r for _, r in ordered], records)
    return {"score": score, "answers": ordered, "details": details}


def evaluate_tasks(model, encoder: Encoder, tests: dict[str, Sequence[dict]], settings, *, progress: bool = False,
                   desc: str = "", evaluate_fn: Callable | None = None,
                   before_batch: Callable[[Sequence[dict]], None] | None = None,
                   metrics: dict[str, str] | None = None) -> dict:
    """``evaluate`` (or ``evaluate_fn``, the caller's binding of it) on every task's test records
    with the run's ``eval`` settings (``EvalSettings``) and each task's metric (``metrics``, default
    ``settings.scorer``): {"scores": {task: score}, "metrics": {task: metric}, "examples": {task: first
    5 answers}, "details": {task: the metric's parts, where it has them}}."""
    out: dict = {"scores": {}, "metrics": {}, "examples": {}, "details": {}}
    for name, recs in tests.items():
        metric = (metrics or {}).get(name) or settings.scorer
        res = (evaluate_fn or evaluate)(model, encoder, recs, metric, settings.max_new_tokens,
                                        batch_size=settings.batch_size, progress=progress, desc=f"{desc}evaluate {name}",
                                        before_batch=before_batch)
        out["scores"][name] = res["score"]
        out["metrics"][name] = metric
        out["examples"][name] = res["answers"][:5]
        if res.get("details"):
            out["details"][name] = res["details"]
    if not out["details"]:
        del out["details"]
    return out
