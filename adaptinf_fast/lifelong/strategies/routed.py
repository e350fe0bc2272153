"""What ``hide`` and ``disco`` share: one expert per task in one LoRA (``lifelong/experts.py``),
trained one per stage, and the task router (``lifelong/routing.py``) whose per-task anchors are
the running means of each task's training records' features, saved with every stage (``router.pt``)."""

from __future__ import annotations

import torch

from ..experts import ExpertLoRA, OneHot
from ..routing import build_router
from ..steps import StageDir
from .base import Strategy, routing_accuracy


class RoutedExperts(Strategy):
    """Subclasses name their settings section (``settings``: with ``experts`` and ``init_std``) and
    say which layers are task-specific, which router they use, what they deploy and how they route."""

    settings = ""

    def __init__(self, run, name: str):
        super().__init__(run, name)
        self.knobs = getattr(self.cfg, self.settings)
        self.experts = self.knobs.experts or len(run.tasks)
        if self.experts < len(run.tasks):
            raise ValueError(f"{self.settings}.experts is {self.experts} for {len(run.tasks)} tasks: one expert per task")
        self.layer: ExpertLoRA | None = None
        self.router = None

    def specific_layers(self) -> tuple[int, ...]:
        return ()

    def router_settings(self):
        return self.cfg.router

    def setup(self, model, encoder, fresh: bool) -> None:
        self.layer = ExpertLoRA(model, self.experts, self.specific_layers())
        if fresh:
            self.layer.init_experts(self.cfg.seed, self.knobs.init_std)
        self.router = build_router(self.router_settings(), model=model, encoder=encoder)
        self.encoder = encoder

    def training(self, t: int):
        return self.layer.mode(OneHot(t - 1))

    def load_router(self, t: int) -> None:
        """The anchors after stage ``t`` (none before stage 1)."""
        self.router.load_state_dict(torch.load(StageDir(self.run.pool, t).router_pt) if t > 0 else
                                    {"modalities": list(self.router.modalities), "sums": [], "counts": []})

    def observe(self, sd: StageDir) -> None:
        """Anchors after stage ``sd.t``: those of stage t-1 plus the mean of task t's training records."""
        self.load_router(sd.t - 1)
        self.router.observe(sd.t - 1, self.run.task_records(sd.t))

    def weights(self, records, t: int) -> torch.Tensor:
        """(N, experts): the router's softmax weights over the t experts trained so far, 0 beyond."""
        w = torch.zeros(len(records), self.experts)
        w[:, :t] = self.router.weights(list(records))
        return w

    def report(self, sd: StageDir, tests: dict[str, list]) -> dict:
        if sd.t == 0:
            return {}
        self.load_router(sd.t)  # tasks seen so far: routed to their own expert?
        return {"routing": routing_accuracy(tests, sd.t, self.router.weights)}


__all__ = ["RoutedExperts"]
