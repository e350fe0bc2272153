"""Federated continual instruction tuning (DESIGN §10): FCIT's client splits and rounds, the
servers' aggregation (FedAvg, DISCO, PILoRA), the client's stage on its own Adapt-∞ pool, and the
Flower apps that carry them (``apps.py``; Flower is the optional extra ``[federated]``)."""

from .aggregate import Prototypes, disco_aggregate, greedy_groups, pilora_centres, weighted_mean
from .config import FederatedRunConfig, FederatedSettings
from .split import dirichlet_split, sample_clients, shard_stage, stage_tasks

__all__ = ["FederatedRunConfig", "FederatedSettings", "Prototypes", "dirichlet_split", "disco_aggregate",
           "greedy_groups", "pilora_centres", "sample_clients", "shard_stage", "stage_tasks", "weighted_mean"]
