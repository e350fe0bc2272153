"""Triton kernel for the within-cluster max similarity (DESIGN §4.3), over each cluster's triangle.

Rows are gathered cluster-major (``order`` kept inside each cluster). Every row knows the start of
its cluster, so a row tile may hold several small clusters (packed) or part of a big one. A program
takes one row tile and walks column tiles from the smallest cluster start among its rows up to its
own last row — never past the diagonal — masking each score to "same cluster and earlier"
(cluster_start[row] <= col < row); the running max and argmax stay in registers. Tiles are launched
longest walk first. Memory: the gathered copy of X plus O(N).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _triton_util as tu
from .reference import cluster_tiles, to_original_order


@triton.jit
def _max_sim_kernel(x_ptr, cstart_ptr, tiles_ptr, best_ptr, arg_ptr, N, D, stride_n, stride_d,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    r0 = tl.load(tiles_ptr + tl.program_id(0))
    rows = r0 + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < N
    cs = tl.load(cstart_ptr + rows, mask=row_ok, other=N)
    col_lo = (tl.min(cs, axis=0) // BLOCK_N) * BLOCK_N
    col_hi = tl.minimum(r0 + BLOCK_M, N)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    arg = tl.full((BLOCK_M,), -1, tl.int64)
    x_rows = x_ptr + rows[:, None] * stride_n
    for c0 in range(col_lo, col_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            xr = tl.load(x_rows + dd[None, :] * stride_d, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            xc = tl.load(x_ptr + cols[None, :] * stride_n + dd[:, None] * stride_d,
                         mask=d_ok[:, None] & (cols < N)[None, :], other=0.0)
            acc = tu.dot(xr, xc, acc, DOT_DTYPE, PRECISION, INTERPRET)
        valid = (cols[None, :] >= cs[:, None]) & (cols[None, :] < rows[:, None])
        s = tl.where(valid, acc, float("-inf"))
        tile_best = tl.max(s, axis=1)
        tile_arg = tl.argmax(s, axis=1, tie_break_left=True).to(tl.int64) + c0
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        arg = tl.where(better, tile_arg, arg)
    tl.store(best_ptr + rows, best, mask=row_ok)
    tl.store(arg_ptr + rows, arg, mask=row_ok)


def max_similarity(xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, progress: bool = False):
    """Same contract as ``reference.max_similarity`` (``progress`` is accepted; one launch)."""
    n, d = xn.shape
    bm = 64 if n >= 64 else max(16, triton.next_power_of_2(n))
    bn, bd = 64, 64 if d >= 64 else max(16, triton.next_power_of_2(d))
    perm, xs, cstart, tiles = cluster_tiles(xn, labels, order, bm)
    best = torch.empty(n, dtype=torch.float32, device=xn.device)
    arg = torch.empty(n, dtype=torch.int64, device=xn.device)
    if xs.dtype in (torch.float16, torch.bfloat16):
        dot_dtype, precision = tu.tl_dtype(xs.dtype), "ieee"
    else:
        xs = xs.float()
        dot_dtype, precision = tl.float32, ("tf32x3" if xs.is_cuda else "ieee")
    _max_sim_kernel[(len(tiles),)](xs, cstart, tiles, best, arg, n, d, xs.stride(0), xs.stride(1),
                                   BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, DOT_DTYPE=dot_dtype, PRECISION=precision,
                                   INTERPRET=tu.interpreting(), num_warps=4)
    return to_original_order(perm, best, arg)
