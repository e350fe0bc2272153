"""Triton fused k-means assignment (DESIGN §4.2): 16-bit screening, float32 decisions.

A program owns BLOCK_M rows; it walks the centroids in BLOCK_K tiles, accumulating x·cᵀ over D in
BLOCK_D chunks on tensor cores (rows and centroids rounded to fp16/bf16, fp32 accumulation), turns
the tile into the score ‖c‖² − 2x·c (L2) or −x·c (cosine) and keeps the running best, its index and
the second best in registers: the N×K matrix is never written. Ties go to the lowest centroid index
(``tl.argmin`` breaks ties left; a later tile replaces the running best only when strictly better).

``ops/screen.py`` bounds how far each screened score can be from the float32 one; rows whose gap
between best and second best is within twice that bound are recomputed in float32 by the reference,
and the winners' values are recomputed in float32, so labels equal float32 arithmetic and values are
float32-accurate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import _triton_util as tu
from .. import screen
from . import screened
from .screened import ScreenedRows, screened_rows, winner_values  # noqa: F401 - this backend's API


@triton.jit
def _assign_kernel(x_ptr, c_ptr, cn_ptr, lab_ptr, best_ptr, second_ptr, N, K, D,
                   stride_xn, stride_ck,
                   COSINE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                   INTERPRET: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    best = tl.full((BLOCK_M,), float("inf"), tl.float32)
    second = tl.full((BLOCK_M,), float("inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_M,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        c_rows = c_ptr + cols.to(tl.int64)[None, :] * stride_ck
        acc = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            xt = tl.load(x_rows + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            ct = tl.load(c_rows + dd[:, None], mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tu.dot(xt, ct, acc, xt.dtype, "ieee", INTERPRET)
        if COSINE:
            score = -acc
        else:
            cn = tl.load(cn_ptr + cols, mask=col_ok, other=0.0)
            score = cn[None, :] - 2.0 * acc
        score = tl.where(col_ok[None, :], score, float("inf"))
        tile_best = tl.min(score, axis=1)
        tile_arg = tl.argmin(score, axis=1, tie_break_left=True)
        tile_second = tl.min(tl.where(tl.arange(0, BLOCK_K)[None, :] == tile_arg[:, None], float("inf"), score), axis=1)
        better = tile_best < best
        second = tl.minimum(tl.minimum(second, tile_second), tl.maximum(best, tile_best))
        best_idx = tl.where(better, tile_arg + k0, best_idx)
        best = tl.minimum(best, tile_best)
    tl.store(lab_ptr + rows, best_idx, mask=row_ok)
    tl.store(best_ptr + rows, best, mask=row_ok)
    tl.store(second_ptr + rows, second, mask=row_ok)


@dataclass(frozen=True)
class Config:
    block_m: int
    block_k: int
    block_d: int
    num_warps: int
    num_stages: int


def _config(n: int, k: int, d: int, device: torch.device) -> Config:
    """128×128 score tiles on two warpgroups (sm_90 SASS in ``bench/static_check.py``), smaller for
    small inputs; D in 64-wide steps, pipelined three deep."""
    pow2 = lambda v, cap: min(cap, max(16, triton.next_power_of_2(v)))  # noqa: E731
    block_m, block_k = pow2(n, 128), pow2(k, 128)
    warps = 8 if block_m * block_k >= 128 * 128 else 4
    return Config(block_m, block_k, pow2(d, 64), warps, 3)


def screened_assign(rows: ScreenedRows, centroids: torch.Tensor, metric: str, cn: torch.Tensor):
    """One kernel launch: (labels int64, best score, second-best score), screened."""
    x = rows.low  # (N, padded width): zero columns add nothing to the dot products
    n, d = x.shape
    k = centroids.shape[0]
    labels = torch.empty(n, dtype=torch.int32, device=x.device)
    best = torch.empty(n, dtype=torch.float32, device=x.device)
    second = torch.empty(n, dtype=torch.float32, device=x.device)
    c = screen.low_copy(centroids, x.dtype)
    cfg = _config(n, k, d, x.device)
    _assign_kernel[(triton.cdiv(n, cfg.block_m),)](
        x, c, cn, labels, best, second, n, k, d, x.stride(0), c.stride(0),
        COSINE=metric == "cosine", BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
        INTERPRET=tu.interpreting(), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return labels.long(), best, second


def assign(x: torch.Tensor, centroids: torch.Tensor, metric: str, c_sqnorm: torch.Tensor | None = None,
           x_sqnorm: torch.Tensor | None = None, values: bool = True, rows: ScreenedRows | None = None):
    """Same contract as ``reference.assign``: (labels int64, squared distance or cosine float32);
    with ``values=False`` the second item is None (Lloyd iterations need only labels). ``rows``:
    ``screened_rows(x, metric)`` computed earlier for the same x."""
    return screened.assign(screened_assign, x, centroids, metric, c_sqnorm, x_sqnorm, values, rows)
