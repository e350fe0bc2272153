"""Integer budget split over clusters (DESIGN §4.6): the training budget (selection) and the pool
budget (pruning, `prune_to_budget`) use the same rule."""

from __future__ import annotations

from typing import Any

import torch

from .. import _validate


def split_budget(sizes: Any, total: int) -> torch.Tensor:
    """Split ``total`` over clusters of the given sizes.

    Equal shares; a cluster smaller than its share is taken whole and the rest is spread over the
    others, repeated until stable; the remaining integer shares are floors with the remainder given
    one by one to the largest clusters (ties: lower cluster index). The shares sum to exactly
    ``min(total, sum(sizes))`` and no share exceeds its cluster's size.

    Args:
        sizes: (K,) non-negative integers.
        total: the total budget B >= 0.

    Returns:
        int64 (K,) shares.
    """
    sizes = _validate.int_vector(sizes, "sizes").cpu()
    if sizes.numel() and sizes.min() < 0:
        raise ValueError("sizes must be >= 0")
    total = _validate.positive_int(total, "total", minimum=0)
    remaining = min(total, int(sizes.sum()))
    shares = torch.zeros_like(sizes)
    active = sizes > 0
    while True:
        n_active = int(active.sum())
        if n_active == 0:
            return shares
        small = active & (sizes * n_active <= remaining)  # size <= remaining / n_active, in integers
        if not small.any():
            break
        shares[small] = sizes[small]
        remaining -= int(sizes[small].sum())
        active &= ~small
    base, extra = divmod(remaining, n_active)
    shares[active] = base
    idx = active.nonzero().flatten()
    largest_first = idx[torch.argsort(-sizes[idx], stable=True)]
    shares[largest_first[:extra]] += 1
    return shares
