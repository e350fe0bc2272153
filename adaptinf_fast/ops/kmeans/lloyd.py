"""Lloyd iterations around a backend's assignment step (DESIGN §4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

Assign = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class LloydResult:
    centers: torch.Tensor  # float32 (K, D)
    labels: torch.Tensor  # int64 (N,)
    inertia: float
    n_iter: int


def sq_distance_from(values: torch.Tensor, metric: str) -> torch.Tensor:
    """Assignment values -> squared L2 distance (for cosine: between the unit vectors)."""
    return (2.0 - 2.0 * values).clamp_min_(0.0) if metric == "cosine" else values


def update_centers(x, labels, dist, k: int, metric: str) -> torch.Tensor:
    """Cluster means (float64 sums); an empty cluster takes the point of the largest cluster that is
    farthest from its centroid, which splits that cluster at the next assignment."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, labels, x.double())
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        labels = labels.clone()
        dist = dist.clone()
        for e in empty:
            big = int(torch.argmax(counts))
            member_dist = torch.where(labels == big, dist, torch.full_like(dist, -1.0))
            p = int(torch.argmax(member_dist))
            sums[big] -= x[p].double()
            sums[e] = x[p].double()
            counts[big] -= 1
            counts[e] = 1
            labels[p] = e
            dist[p] = -1.0
    centers = (sums / counts.clamp_min(1).unsqueeze(1).double()).float()
    if metric == "cosine":
        centers = torch.nn.functional.normalize(centers, dim=1)
    return centers


def lloyd(x, centers, assign: Assign, *, metric: str, max_iter: int, tol: float, progress: bool = False) -> LloydResult:
    """Iterate assign/update until labels stop changing or the squared centre shift is <= tol."""
    k = centers.shape[0]
    prev = None
    n_iter = 0
    bar = tqdm(total=max_iter, desc="k-means", unit="it", disable=not progress, leave=False)
    for n_iter in range(1, max_iter + 1):
        labels, values = assign(x, centers)
        new = update_centers(x, labels, sq_distance_from(values, metric), k, metric)
        shift = float((new - centers).pow(2).sum())
        centers = new
        bar.update(1)
        if prev is not None and torch.equal(labels, prev):
            break
        prev = labels
        if shift <= tol:
            break
    bar.close()
    labels, values = assign(x, centers)  # labels consistent with the final centres
    inertia = float(sq_distance_from(values, metric).double().sum())
    return LloydResult(centers, labels, inertia, n_iter)
