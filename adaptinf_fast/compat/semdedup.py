"""Drop-in for SemDeDup's per-cluster step (the O(n²) part of its pipeline).

SemDeDup sorts one cluster's (L2-normalised) embeddings by its rule, forms the full n×n cosine
matrix, keeps its strict upper triangle and takes each column's maximum M_j; sample j is removed
at threshold eps when M_j > 1 - eps. ``semdedup`` below returns the same M (with the same floor of
0 that the zeroed lower triangle gives, so the first sample has M = 0) from
``cluster_max_similarity`` in O(n) extra memory; ``points_to_remove`` returns SemDeDup's per-eps
removal flags. Rows are normalised in float32 here; for SemDeDup's normalised embeddings that
changes nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..ops.dedup import cluster_max_similarity


def semdedup(cluster: Any, cluster_reps: torch.Tensor, device: Any = None) -> torch.Tensor:
    """SemDeDup's ``semdedup(cluster, cluster_reps, device)``: M (n,) float32 on the CPU.

    ``cluster`` (the sample ids/paths, unused here except for its length check) and
    ``cluster_reps`` (n, D) must be in the cluster's sorted order already, as in SemDeDup.
    """
    reps = torch.as_tensor(cluster_reps)
    if cluster is not None and len(cluster) != reps.shape[0]:
        raise ValueError(f"cluster has {len(cluster)} entries but cluster_reps has {reps.shape[0]} rows")
    if device is not None:
        reps = reps.to(device)
    m, _ = cluster_max_similarity(reps, torch.zeros(reps.shape[0], dtype=torch.long, device=reps.device))
    return m.clamp_min(0.0).cpu()  # SemDeDup's triu of a zero-diagonal matrix floors M at 0


def points_to_remove(cluster_reps: torch.Tensor, eps_list: Sequence[float]) -> dict[str, torch.Tensor]:
    """{"eps=<eps>": bool (n,)} — True where SemDeDup removes the sample at that eps."""
    m = semdedup(None, cluster_reps)
    return {f"eps={eps}": m > 1 - eps for eps in eps_list}
