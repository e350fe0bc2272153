"""A federated run's settings: the lifelong run's sections plus ``federated`` (FCIT's setting)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ..lifelong.config import RunConfig, RunFile, Strict


class FederatedSettings(Strict):
    """FCIT's setting. Paper defaults (``Ghy0501/FCIT`` scripts): 50 clients, 10% of them (5) per
    round, 10 rounds per task, 1 local epoch, Dirichlet β on quantity (1.0 in the README's example),
    E = 8 subspaces of the LoRA (task-related; 4 for capability-related)."""

    clients: int = Field(50, ge=1)
    per_round: int = Field(5, ge=1)
    rounds_per_task: int = Field(10, ge=1)
    local_epochs: int = Field(1, ge=1)
    beta: float = Field(1.0, gt=0)
    min_size: int = Field(1, ge=1)  # records per client per stage, at least (every sampled client trains)
    scenario: Literal["task", "capability"] = "task"  # one dataset per stage, or grouped datasets
    groups: Optional[list[list[str]]] = None  # capability: the tasks of each stage (default: pairs)
    heterogeneous: bool = False  # clients of one stage hold different tasks (split.shard_stage)
    aggregation: Literal["fedavg", "disco"] = "disco"
    experts: int = Field(8, ge=1)  # DISCO's subspaces E (the LoRA's rank is E · lora.r, also under FedAvg)
    threshold: float = Field(0.9, gt=-1, le=1)  # DISCO: grouping and subspace reuse (cosine)
    select: bool = False  # Adapt-∞ selection and pruning on every client (the run's selection section)
    train_projector: bool = True  # the multimodal projector trains on the clients and is averaged (FedAvg), as in FCIT

    @model_validator(mode="after")
    def _check(self):
        if self.per_round > self.clients:
            raise ValueError(f"federated.per_round ({self.per_round}) exceeds federated.clients ({self.clients})")
        return self


class FederatedRunConfig(RunConfig):
    federated: FederatedSettings = Field(default_factory=FederatedSettings)


class FederatedRunFile(RunFile):
    """A federated run's file: a run file (``out``, ``model``, ``stages``: one task each) plus ``federated``."""

    federated: FederatedSettings = Field(default_factory=FederatedSettings)


__all__ = ["FederatedRunConfig", "FederatedRunFile", "FederatedSettings"]
