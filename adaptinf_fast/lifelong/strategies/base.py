"""The interface of a model-side strategy, and ``sequential`` (the default) as its plain case."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Sequence

import torch

from ..steps import StageDir


class Strategy:
    """``sequential``: one adapter carried over from stage to stage; the model after stage t is it.

    A strategy is built per run (``run``: the ``LifelongRun``, whose helpers load and save adapter
    states) and answers, for the runner:

    * ``experts``: how many rank-``lora.r`` experts the run's adapter holds (1: a plain LoRA);
    * ``projections``: which of the language model's projections the adapter targets by default;
    * ``setup(model, encoder, fresh)``: once, after the adapter exists (``fresh``: new, not loaded);
    * ``train_from(t)``: the stage whose adapter stage t's training starts from;
    * ``training(t)``: a context around stage t's training (what trains);
    * ``train_hooks(t, records, collate)``: the collate function (items carry their record's id as
      ``_id``) and an optional extra loss (``train_lora``'s ``extra_loss``) of stage t's training;
    * ``deploy(model, encoder, sd)``: build what is deployed after stage ``sd.t`` (deterministic and
      idempotent: a resumed run rebuilds the same);
    * ``use(model, sd)``: put the model after stage ``sd.t`` in place for features or evaluation;
      returns a per-batch hook ``f(records)`` when its layers depend on the input, else None;
    * ``report(sd, tests)``: extra fields for the stage's evaluation (e.g. routing accuracy).
    """

    experts = 1
    projections = None  # the language model's projections LoRA targets by default (None: all of them)

    def __init__(self, run, name: str = "sequential"):
        self.run, self.cfg, self.name = run, run.cfg, name

    def setup(self, model, encoder, fresh: bool) -> None:
        pass

    def train_from(self, t: int) -> int:
        return t - 1

    def training(self, t: int) -> ContextManager:
        return nullcontext()

    def train_hooks(self, t: int, records: Sequence[dict], collate: Callable) -> tuple[Callable, Callable | None]:
        return collate, None

    def deploy(self, model, encoder, sd: StageDir) -> None:
        pass

    def use(self, model, sd: StageDir) -> Callable[[Sequence[dict]], None] | None:
        self.run.load_adapter(model, sd)
        return None

    def report(self, sd: StageDir, tests: dict[str, list]) -> dict[str, Any]:
        return {}


def routing_accuracy(tests: dict[str, list], t: int, scores: Callable[[list], torch.Tensor]) -> dict[str, float]:
    """Per task seen after stage t (the first t of ``tests``): the share of its test records whose
    best-scoring task (``scores(records)``: (N, t)) is their own."""
    out = {}
    for i, name in enumerate(list(tests)[:t]):
        recs = tests[name]
        out[name] = float((scores(recs).argmax(1).cpu() == i).float().mean()) if recs else float("nan")
    return out
