"""Centroid initialisation: greedy k-means++ (as scikit-learn) on an optional subsample.

``init="random"`` needs no code of its own: it takes the first K rows of the seeded global subsample."""

from __future__ import annotations

import math

import torch


def default_init_size(n: int, k: int) -> int:
    """k-means++ runs on at most max(10_000, 20·K) random points (all points when N is smaller)."""
    return min(n, max(10_000, 20 * k))


def _sqdist(a: torch.Tensor, x: torch.Tensor, x_sqnorm: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances (len(a), N) between rows of a and rows of x, clamped at 0."""
    return (a.pow(2).sum(1, keepdim=True) - 2.0 * (a @ x.T) + x_sqnorm).clamp_min_(0.0)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator, init_size: int,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy k-means++: each step samples 2 + ⌊ln K⌋ candidates ∝ D² (times the sample weight) and
    keeps the one that lowers the potential Σ w D² most (Arthur & Vassilvitskii 2007; scikit-learn's
    variant; the first centre ∝ w). float32 (K, D)."""
    n = x.shape[0]
    if init_size < n:
        pick = torch.randperm(n, generator=generator)[:init_size].to(x.device)
        x, weights = x[pick], None if weights is None else weights[pick]
        n = init_size
    trials = 2 + int(math.log(k))
    x_sqnorm = torch.cat([x[r : r + 4096].pow(2).sum(1) for r in range(0, n, 4096)] or [x.new_zeros(0)])  # no (n, D) temporary
    w = None if weights is None else weights.to(x.device, torch.float64)
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    if w is None:
        first = int(torch.randint(n, (1,), generator=generator))
    else:
        first = int(torch.searchsorted(torch.cumsum(w, 0), torch.rand(1, generator=generator, dtype=torch.float64).to(x.device)
                                       * w.sum()).clamp_(max=n - 1))
    centers[0] = x[first]
    closest = _sqdist(x[first : first + 1], x, x_sqnorm)[0].double()
    pot = (closest if w is None else closest * w).sum()
    for c in range(1, k):
        targets = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device) * pot
        cand = torch.searchsorted(torch.cumsum(closest if w is None else closest * w, 0), targets).clamp_(max=n - 1)
        d = torch.minimum(closest, _sqdist(x[cand], x, x_sqnorm).double())
        pots = (d if w is None else d * w).sum(1)
        best = int(torch.argmin(pots))
        closest, pot = d[best], pots[best]
        centers[c] = x[cand[best]]
    return centers
