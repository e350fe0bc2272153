"""Plain-torch fused-in-spirit assignment (DESIGN §4.2): chunked, never holds all N×K at once."""

from __future__ import annotations

import torch

# Rows per chunk are chosen so one chunk's N×K score block stays near this many float32 entries.
CHUNK_ENTRIES = 1 << 24


def _rows_per_chunk(k: int) -> int:
    return max(256, CHUNK_ENTRIES // max(k, 1))


def assign(x: torch.Tensor, centroids: torch.Tensor, metric: str, c_sqnorm: torch.Tensor | None = None,
           x_sqnorm: torch.Tensor | None = None, values: bool = True):
    """Nearest centroid per row of float32 ``x`` (N, D) among float32 ``centroids`` (K, D).

    For ``"l2"`` returns (labels int64, squared L2 distance float32), computed as
    ‖x‖² − 2 x·c + ‖c‖² and clamped at 0. For ``"cosine"`` rows and centroids must already be
    L2-normalised; returns (labels, cosine similarity). ``x_sqnorm``: precomputed ‖x‖² (optional).
    Ties go to the lowest centroid index
    (``torch.min``/``torch.max`` along a dim return the first extreme index).
    """
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    values = torch.empty(n, dtype=torch.float32, device=x.device)
    if metric == "l2" and c_sqnorm is None:
        c_sqnorm = centroids.pow(2).sum(1)
    step = _rows_per_chunk(centroids.shape[0])
    for r0 in range(0, n, step):
        xc = x[r0 : r0 + step]
        dots = xc @ centroids.T
        if metric == "cosine":
            values[r0 : r0 + step], labels[r0 : r0 + step] = dots.max(dim=1)
        else:
            # argmin of ‖c‖² − 2 x·c is the nearest centroid; add ‖x‖² only to the winners.
            best, idx = (c_sqnorm - 2.0 * dots).min(dim=1)
            xsq = x_sqnorm[r0 : r0 + step] if x_sqnorm is not None else torch.linalg.vector_norm(xc, dim=1).square_()
            values[r0 : r0 + step] = (best + xsq).clamp_min_(0.0)
            labels[r0 : r0 + step] = idx
    return labels, values


def kernel_norms(x: torch.Tensor, centroids: torch.Tensor, metric: str, c_sqnorm: torch.Tensor | None,
                 x_sqnorm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous float32 (‖c‖² (K,), ‖x‖² (N,)) for the kernels, from precomputed values when given.
    For ``"cosine"`` the kernels do not read ‖x‖²; ‖c‖² is returned in its place."""
    cn = (c_sqnorm if c_sqnorm is not None else centroids.float().pow(2).sum(1)).float().contiguous()
    if metric != "l2":
        return cn, cn
    xn = x_sqnorm if x_sqnorm is not None else torch.linalg.vector_norm(x.float(), dim=1).square_()
    return cn, xn.float().contiguous()
