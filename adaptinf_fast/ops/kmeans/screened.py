"""16-bit screening with float32 decisions for the k-means assignment (DESIGN §4.2), shared by the
Triton and CUDA kernels: a kernel gives each row's screened best, its index and the second best;
``ops/screen.py`` bounds how far a screened score is from the float32 one, rows whose gap is within
twice that bound are recomputed in float32 by the reference, and the winners' values are recomputed
in float32, so labels equal float32 arithmetic and values are float32-accurate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import screen
from . import reference
from .reference import kernel_norms


@dataclass
class ScreenedRows:
    """x rounded to the screening dtype with its per-row rounding error and norm (reusable across
    assignments of the same rows, e.g. Lloyd iterations)."""

    low: torch.Tensor
    err: torch.Tensor
    norm: torch.Tensor


def screened_rows(x: torch.Tensor, metric: str) -> ScreenedRows:
    low, err, norm = screen.rounding_error(x, screen.screen_dtype(metric == "cosine"))
    return ScreenedRows(low, err, norm)


def assign(launch, x: torch.Tensor, centroids: torch.Tensor, metric: str, c_sqnorm: torch.Tensor | None = None,
           x_sqnorm: torch.Tensor | None = None, values: bool = True, rows: ScreenedRows | None = None):
    """``reference.assign``'s contract from a screening kernel: ``launch(rows, centroids, metric, cn)``
    returns screened (labels int64, best score, second-best score); rows whose gap is within twice
    the screening bound are recomputed in float32, and the winners' values are float32."""
    n, d = x.shape
    k = centroids.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device), torch.empty(0, dtype=torch.float32, device=x.device)
    rows = rows if rows is not None else screened_rows(x, metric)
    cn, xn = kernel_norms(x, centroids, metric, c_sqnorm, x_sqnorm)
    labels, best, second = launch(rows, centroids, metric, cn)
    ec = float(torch.linalg.vector_norm(centroids.float() - centroids.to(rows.low.dtype).float(), dim=1).max())
    nc = float(cn.max().sqrt())
    bound = screen.dot_bound(rows.err, rows.norm, ec, nc, d)
    if metric == "l2":  # score = ‖c‖² − 2x·c, rounded once more in each arithmetic
        bound = 2.0 * bound + 2.0**-23 * (nc * nc + 2.0 * rows.norm * nc)
    redo = screen.undecided(second - best, bound).nonzero().flatten()
    if redo.numel():
        lab_r, _ = reference.assign(x[redo], centroids, metric, c_sqnorm=cn,
                                    x_sqnorm=xn[redo] if metric == "l2" else None)
        labels[redo] = lab_r
    if not values:
        return labels, None
    return labels, winner_values(x, centroids, labels, metric, cn, xn)


def winner_values(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, metric: str, cn: torch.Tensor,
                  xn: torch.Tensor) -> torch.Tensor:
    """float32 value of each row's assigned centroid, as ``reference.assign`` reports it."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for r0 in range(0, x.shape[0], screen.ROWS_PER_CHUNK):
        xc = x[r0 : r0 + screen.ROWS_PER_CHUNK].float()
        lab = labels[r0 : r0 + screen.ROWS_PER_CHUNK]
        dots = (xc * centroids[lab].float()).sum(1)
        if metric == "cosine":
            out[r0 : r0 + screen.ROWS_PER_CHUNK] = dots
        else:
            out[r0 : r0 + screen.ROWS_PER_CHUNK] = (cn[lab] - 2.0 * dots + xn[r0 : r0 + screen.ROWS_PER_CHUNK]).clamp_min_(0.0)
    return out
