"""Triton fused k-means assignment (DESIGN §4.2): distances and argmin in one kernel.

A program owns BLOCK_M rows; it walks the centroids in BLOCK_K tiles, accumulating x·cᵀ over D
in BLOCK_D chunks with ``tl.dot`` (fp32 accumulation), turns the tile into ‖c‖² − 2x·c (L2) or
−x·c (cosine, unit rows), and keeps a running (best, index) in registers: the N×K matrix is never
written. Ties go to the lowest centroid index (``tl.argmin`` breaks ties left; a later tile
replaces the running best only when strictly better).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _triton_util as tu
from .reference import kernel_norms


@triton.jit
def _assign_kernel(x_ptr, c_ptr, cn_ptr, xn_ptr, lab_ptr, val_ptr, N, K, D,
                   stride_xn, stride_xd, stride_ck, stride_cd,
                   COSINE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    best = tl.full((BLOCK_M,), float("inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_M,), tl.int64)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        c_rows = c_ptr + cols.to(tl.int64)[None, :] * stride_ck
        acc = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            xt = tl.load(x_rows + dd[None, :] * stride_xd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            ct = tl.load(c_rows + dd[:, None] * stride_cd, mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tu.dot(xt, ct, acc, DOT_DTYPE, PRECISION, INTERPRET)
        if COSINE:
            score = -acc
        else:
            cn = tl.load(cn_ptr + cols, mask=col_ok, other=0.0)
            score = cn[None, :] - 2.0 * acc
        score = tl.where(col_ok[None, :], score, float("inf"))
        tile_best = tl.min(score, axis=1)
        tile_arg = tl.argmin(score, axis=1, tie_break_left=True).to(tl.int64) + k0
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_arg, best_idx)
    if COSINE:
        value = -best
    else:
        xn = tl.load(xn_ptr + rows, mask=row_ok, other=0.0)
        value = tl.maximum(best + xn, 0.0)
    tl.store(lab_ptr + rows, best_idx, mask=row_ok)
    tl.store(val_ptr + rows, value, mask=row_ok)


def _config(n: int, k: int, d: int):
    block_m = 64 if n >= 64 else max(16, triton.next_power_of_2(n))
    block_k = 64 if k >= 64 else max(16, triton.next_power_of_2(k))
    block_d = 64 if d >= 64 else max(16, triton.next_power_of_2(d))
    return block_m, block_k, block_d


def assign(x: torch.Tensor, centroids: torch.Tensor, metric: str, c_sqnorm: torch.Tensor | None = None,
           x_sqnorm: torch.Tensor | None = None):
    """Same contract as ``reference.assign``: (labels int64, squared distance or cosine float32)."""
    n, d = x.shape
    k = centroids.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    values = torch.empty(n, dtype=torch.float32, device=x.device)
    if n == 0:
        return labels, values
    c = centroids.to(x.dtype)
    cn, xn = kernel_norms(x, centroids, metric, c_sqnorm, x_sqnorm)
    if x.dtype in (torch.float16, torch.bfloat16):
        dot_dtype, precision = tu.tl_dtype(x.dtype), "ieee"
    else:
        x, c = x.float(), c.float()
        dot_dtype, precision = tl.float32, ("tf32x3" if x.is_cuda else "ieee")
    bm, bk, bd = _config(n, k, d)
    _assign_kernel[(triton.cdiv(n, bm),)](
        x, c, cn, xn, labels, values, n, k, d, x.stride(0), x.stride(1), c.stride(0), c.stride(1),
        COSINE=metric == "cosine", BLOCK_M=bm, BLOCK_K=bk, BLOCK_D=bd, DOT_DTYPE=dot_dtype,
        PRECISION=precision, INTERPRET=tu.interpreting(), num_warps=4,
    )
    return labels, values
