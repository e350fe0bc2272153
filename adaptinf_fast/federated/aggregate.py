"""The servers' aggregation: FedAvg, DISCO's dynamic knowledge organisation, PILoRA's per-class
prototype re-weighting. Pure functions of the clients' replies (tensors in, tensors out, CPU).

DISCO (``Ghy0501/FCIT``, ``Fed_utils/model_aggregation.py``), where we differ on purpose:

* greedy grouping skips clients already grouped (the official inner loop does not, so a client can
  sit in two groups and its weight is divided into a group it never added to);
* a group's subspace is chosen from its representative by the reuse rule (cos > threshold to a
  learned prototype: that slot; else the first free slot; else the nearest), every round; the
  official code maps groups to slots by their order in a list rebuilt at a task's first round;
* prototypes are data-weighted running means, (P·S + Σf) / (S + n) (the official update divides
  only the new sum, so a reused slot's prototype stops moving), kept in float64 (not bf16);
* every member's trained subspace is averaged into its group's slot, weighted by data size (groups
  that land on one slot in a round are averaged together; a member that trained another slot is
  moved, as the official code renames it); other slots and weights are untouched (the official code copies the last client's other weights).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def weighted_mean(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ w_c θ_c / Σ w_c per key (float64 accumulation, each key back in its dtype)."""
    if not states or len(states) != len(weights):
        raise ValueError(f"weighted_mean: {len(states)} states for {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weighted_mean: the weights sum to {total}")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys:
            raise ValueError("weighted_mean: the clients' states hold different keys")
    return {k: (sum(s[k].double() * w for s, w in zip(states, weights)) / total).to(states[0][k].dtype) for k in keys}


def greedy_groups(features: torch.Tensor, threshold: float = 0.9) -> list[list[int]]:
    """DISCO's client grouping: in order, an ungrouped client i opens a group with every ungrouped
    client j whose cosine similarity to it is >= ``threshold``. features: (C, D) float."""
    x = F.normalize(features.double(), dim=1)
    sim = x @ x.T
    free = torch.ones(len(x), dtype=torch.bool)
    groups = []
    for i in range(len(x)):
        if free[i]:
            members = torch.nonzero(free & (sim[i] >= threshold)).flatten().tolist()
            members = [i] + [j for j in members if j != i]
            free[members] = False
            groups.append(members)
    return groups


class Prototypes:
    """E slots of data-weighted running means of text features (DISCO's per-subspace prototypes)."""

    def __init__(self, slots: int, dim: int):
        self.sums = torch.zeros(slots, dim, dtype=torch.float64)
        self.counts = torch.zeros(slots, dtype=torch.float64)

    @property
    def used(self) -> list[int]:
        return torch.nonzero(self.counts > 0).flatten().tolist()

    def means(self) -> torch.Tensor:
        """(E, D) float32; unused slots are zero."""
        return (self.sums / self.counts.clamp_min(1)[:, None]).float()

    def choose(self, feature: torch.Tensor, threshold: float = 0.9) -> int:
        """The slot for a (D,) feature: a learned slot with cos > threshold (the most similar), else
        the first free slot, else the most similar."""
        used = self.used
        if not used:
            return 0
        cos = F.cosine_similarity(self.means()[used].double(), feature.double()[None], dim=1)
        best = used[int(cos.argmax())]
        if float(cos.max()) > threshold:
            return best
        free = torch.nonzero(self.counts == 0).flatten().tolist()
        return free[0] if free else best

    def add(self, slot: int, feature_sum: torch.Tensor, count: float) -> None:
        self.sums[slot] += feature_sum.double()
        self.counts[slot] += count

    def state(self) -> dict[str, torch.Tensor]:
        return {"proto_sums": self.sums.clone(), "proto_counts": self.counts.clone()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "Prototypes":
        p = cls(*state["proto_sums"].shape)
        p.sums, p.counts = state["proto_sums"].double().clone(), state["proto_counts"].double().clone()
        return p


def slot_rows(key: str, slot: int, rank: int) -> tuple:
    """The index of subspace ``slot`` (rank ``rank``) in a LoRA weight: rows of A, columns of B."""
    rows = slice(slot * rank, (slot + 1) * rank)
    return (rows,) if ".lora_A." in key else (slice(None), rows)


def slot_state(state: dict[str, torch.Tensor], slot: int, rank: int) -> dict[str, torch.Tensor]:
    """Subspace ``slot`` of a LoRA state (only its lora_A / lora_B weights), cloned."""
    return {k: v[slot_rows(k, slot, rank)].clone() for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def disco_aggregate(global_state: dict[str, torch.Tensor], replies: Sequence[dict], protos: Prototypes, rank: int,
                    threshold: float = 0.9) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """One DISCO server round. ``replies``: per client {"state": its trained subspace (slot_state),
    "n": data size, "feature_sum": (D,) sum of its records' text features, "feature_count"}; sorted
    by client id by the caller. Returns the new global state and the groups ({members, slot, n}).
    ``protos`` is updated in place."""
    means = torch.stack([r["feature_sum"].double() / max(r["feature_count"], 1) for r in replies])
    new = {k: v.clone() for k, v in global_state.items()}
    groups, by_slot = [], {}
    for members in greedy_groups(means, threshold):
        n = sum(replies[i]["n"] for i in members)
        rep = sum(replies[i]["feature_sum"].double() for i in members) / sum(replies[i]["feature_count"] for i in members)
        slot = protos.choose(rep, threshold)
        protos.add(slot, sum(replies[i]["feature_sum"].double() for i in members),
                   sum(replies[i]["feature_count"] for i in members))
        by_slot.setdefault(slot, []).extend(members)
        groups.append({"members": members, "slot": slot, "n": n})
    for slot, members in by_slot.items():  # groups that land on one subspace are averaged together
        avg = weighted_mean([replies[i]["state"] for i in members], [replies[i]["n"] for i in members])
        for k, v in avg.items():
            new[k][slot_rows(k, slot, rank)] = v.to(new[k].dtype)
    return new, groups


def pilora_centres(centres: torch.Tensor, feature_means: torch.Tensor, holds: torch.Tensor,
                   temperature: float = 0.2) -> torch.Tensor:
    """PILoRA's server re-weighting of one class's prototype (``utils.py``): client k's centre c_k
    (centres: (K, D)) is weighted by softmax(s'_k / temperature), s_k = 1 / Σ_j ‖c_k − f̄_j‖ over the
    clients j holding the class (feature_means: (K, D), holds: (K,) bool), s' min-max normalised.
    Clients not holding the class are left out (the official code weights every one of its 10
    clients 0.1 when none holds it: we keep the class's centre then, returned as None)."""
    idx = torch.nonzero(holds).flatten()
    if len(idx) == 0:
        return None
    c, f = centres[idx].double(), feature_means[idx].double()
    s = 1.0 / torch.cdist(c, f).sum(1).clamp_min(1e-12)
    spread = s.max() - s.min()
    s = (s - s.min()) / spread if spread > 0 else torch.zeros_like(s)  # all equal: equal weights (not NaN)
    w = torch.softmax(s / temperature, 0)
    return (w[:, None] * c).sum(0).to(centres.dtype)


__all__ = ["Prototypes", "disco_aggregate", "greedy_groups", "pilora_centres", "slot_rows", "slot_state", "weighted_mean"]
