"""16-bit screening with float32 decisions for the within-cluster max similarity (DESIGN §4.3),
shared by the Triton and CUDA kernels: rows whose screened best and second best are within twice
the bound of ``ops/screen.py`` are recomputed in float32, and every M_j is recomputed in float32
from its winner, so decisions equal float32 arithmetic."""

from __future__ import annotations

import torch

from .. import screen
from .reference import exact_rows, to_original_order


def max_similarity(launch, xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, exact: bool = True):
    """``reference.max_similarity``'s contract from a screening kernel: ``launch(low, labels, order)``
    on the fp16 rows gives (perm, best, arg, second) in cluster-major positions. ``exact=False``
    returns the screened values and winners."""
    n, d = xn.shape
    dtype = screen.screen_dtype(True)
    if not exact:
        perm, best, arg, _ = launch(screen.low_copy(xn, dtype), labels, order)
        return to_original_order(perm, best, arg)
    low, err, norm = screen.rounding_error(xn, dtype)
    perm, best, arg, second = launch(low, labels, order)
    del low
    m, idx = to_original_order(perm, best, arg)
    second_orig = torch.empty_like(second)
    second_orig[perm] = second
    bound = screen.dot_bound(err, norm, float(err.max()), float(norm.max()), d)
    redo = (screen.undecided(m - second_orig, bound) & (idx >= 0)).nonzero().flatten()
    if redo.numel():
        m[redo], idx[redo] = exact_rows(xn, labels, order, redo)
    has = idx >= 0
    for r0 in range(0, n, screen.ROWS_PER_CHUNK):  # M_j in float32 from its winner
        sl = slice(r0, r0 + screen.ROWS_PER_CHUNK)
        rows = has[sl].nonzero().flatten() + r0
        m[rows] = (xn[rows] * xn[idx[rows]]).sum(1)
    return m, idx
