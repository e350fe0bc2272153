"""Coverage-centric sampling inside one cluster (DESIGN §4.7)."""

from __future__ import annotations

import math

import torch

TRIM_LO, TRIM_HI, BINS = 0.05, 0.95, 50


def ccs_bins(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(trimmed mask, bin index per value (-1 outside the trimmed set), bin edges (BINS + 1,))."""
    v = values.double()
    lo, hi = torch.quantile(v, TRIM_LO), torch.quantile(v, TRIM_HI)
    trimmed = (v >= lo) & (v <= hi)
    edges = torch.linspace(float(lo), float(hi), BINS + 1, dtype=torch.float64)
    width = (hi - lo) / BINS
    idx = ((v - lo) / width).floor().long().clamp(0, BINS - 1) if width > 0 else torch.zeros_like(v, dtype=torch.long)
    return trimmed, torch.where(trimmed, idx, torch.full_like(idx, -1)), edges


def ccs_sample(values: torch.Tensor, budget: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``budget`` samples chosen by CCS.

    Drop values below the 5th and above the 95th percentile; split the rest into 50 equal-width
    bins; walk the bins from high to low score, drawing ceil(remaining budget / remaining bins)
    uniformly at random from each (all of a bin that holds fewer), passing shortfalls on; a walk
    that ends short is repeated over the trimmed samples not yet taken; if the trimmed set cannot
    fill the budget, the rest is drawn uniformly at random from the trimmed tails. Seeded.
    """
    n = values.numel()
    budget = min(int(budget), n)
    if budget <= 0:
        return torch.zeros(0, dtype=torch.long)
    if budget == n:
        return torch.arange(n)
    trimmed, idx, _ = ccs_bins(values)
    taken = torch.zeros(n, dtype=torch.bool)
    remaining = budget
    # A walk can end short while upper bins still hold samples (shortfalls only move downwards):
    # walk again over what is left of the trimmed set, then fall back to the tails.
    while remaining and (trimmed & ~taken).any():
        for b in range(BINS - 1, -1, -1):
            if remaining == 0:
                break
            members = ((idx == b) & ~taken).nonzero().flatten()
            take = min(members.numel(), math.ceil(remaining / (b + 1)))
            if take:
                taken[members[torch.randperm(members.numel(), generator=generator)[:take]]] = True
                remaining -= take
    if remaining:
        tails = (~trimmed).nonzero().flatten()
        taken[tails[torch.randperm(tails.numel(), generator=generator)[:remaining]]] = True
    return taken.nonzero().flatten()
