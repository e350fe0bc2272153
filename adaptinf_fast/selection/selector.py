"""Selector per cluster by histogram entropy (DESIGN §4.5)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

BINS, LO, HI = 50, -4.0, 4.0


def histogram_entropy(values: torch.Tensor) -> float:
    """Shannon entropy (bits) of a 50-bin histogram over [-4, 4] of the z-scored values; values
    outside the range count in the edge bins; zero spread (or fewer than 2 values) gives 0."""
    v = values.double().flatten()
    if v.numel() < 2:
        return 0.0
    std = v.std(unbiased=False)
    if not torch.isfinite(std) or std == 0:
        return 0.0
    z = ((v - v.mean()) / std).clamp(LO, HI)
    idx = ((z - LO) / (HI - LO) * BINS).floor().long().clamp(0, BINS - 1)
    p = torch.bincount(idx, minlength=BINS).double() / v.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def choose_selectors(scores: Mapping[str, torch.Tensor], labels: torch.Tensor,
                     order: Sequence[str] | None = None) -> dict[int, str]:
    """For each cluster, the score whose within-cluster distribution has the largest histogram
    entropy; ties go to the score listed first (``order``, default the mapping's order)."""
    names = list(order) if order is not None else list(scores)
    if not names:
        raise ValueError("no scores to choose from")
    for n in names:
        if n not in scores:
            raise ValueError(f"score {n!r} is missing")
        if scores[n].shape != labels.shape:
            raise ValueError(f"score {n!r} has {scores[n].numel()} values but there are {labels.numel()} samples")
    chosen = {}
    for c in torch.unique(labels).tolist():
        members = labels == c
        best, best_h = names[0], -1.0
        for n in names:
            h = histogram_entropy(scores[n][members])
            if h > best_h:  # strict: ties keep the earlier score
                best, best_h = n, h
        chosen[int(c)] = best
    return chosen
