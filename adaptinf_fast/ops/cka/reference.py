"""Linear CKA by its definition (Kornblith et al., 2019), on whole activation matrices: the oracle.

CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = Xc Xcᵀ, L = Yc Ycᵀ the Gram matrices
of the column-centred activations and HSIC(K, L) = <K, L>_F (the 1/(n-1)² factors cancel).
"""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """x (n, d1), y (n, d2): the same n samples seen by two layers or models."""
    xc = x.double() - x.double().mean(0)
    yc = y.double() - y.double().mean(0)
    k, l = xc @ xc.T, yc @ yc.T
    hsic = lambda a, b: float((a * b).sum())  # noqa: E731
    return hsic(k, l) / (hsic(k, k) * hsic(l, l)) ** 0.5
