"""The interface of a model-side strategy, and ``sequential`` (the default) as its plain case."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Sequence

from ..steps import StageDir


class Strategy:
    """``sequential``: one adapter carried over from stage to stage; the model after stage t is it.

    A strategy is built per run (``run``: the ``LifelongRun``, whose helpers load and save adapter
    states) and answers, for the runner:

    * ``experts``: how many rank-``lora.r`` experts the run's adapter holds (1: a plain LoRA);
    * ``setup(model, encoder, fresh)``: once, after the adapter exists (``fresh``: new, not loaded);
    * ``train_from(t)``: the stage whose adapter stage t's training starts from;
    * ``training(t)``: a context around stage t's training (what trains);
    * ``deploy(model, encoder, sd)``: build what is deployed after stage ``sd.t`` (deterministic and
      idempotent: a resumed run rebuilds the same);
    * ``use(model, sd)``: put the model after stage ``sd.t`` in place for features or evaluation;
      returns a per-batch hook ``f(records)`` when its layers depend on the input, else None;
    * ``report(sd, tests)``: extra fields for the stage's evaluation (e.g. routing accuracy).
    """

    experts = 1

    def __init__(self, run, name: str = "sequential"):
        self.run, self.cfg, self.name = run, run.cfg, name

    def setup(self, model, encoder, fresh: bool) -> None:
        pass

    def train_from(self, t: int) -> int:
        return t - 1

    def training(self, t: int) -> ContextManager:
        return nullcontext()

    def deploy(self, model, encoder, sd: StageDir) -> None:
        pass

    def use(self, model, sd: StageDir) -> Callable[[Sequence[dict]], None] | None:
        self.run.load_adapter(model, sd)
        return None

    def report(self, sd: StageDir, tests: dict[str, list]) -> dict[str, Any]:
        return {}
