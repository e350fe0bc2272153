"""Triton kernel for the within-cluster max similarity (DESIGN §4.3), over each cluster's triangle.

Rows are gathered cluster-major (``order`` kept inside each cluster) in fp16 (unit rows: no
overflow, 11-bit significands). Every row knows the start of its cluster, so a row tile may hold
several small clusters (packed) or part of a big one. A program takes one row tile and walks column
tiles from the smallest cluster start among its rows up to its own last row — never past the
diagonal — masking each score to "same cluster and earlier" (cluster_start[row] <= col < row); the
running best, its index and the second best stay in registers. Tiles are launched longest walk
first. Memory: the gathered fp16 copy of X plus O(N).

With ``exact`` (default) the screened results are made float32-exact as ``ops/screen.py`` explains:
rows whose best and second best are within twice the screening bound are recomputed in float32,
and every M_j is recomputed in float32 from its winner.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _triton_util as tu
from . import screened
from .reference import cluster_tiles


@triton.jit
def _max_sim_kernel(x_ptr, cstart_ptr, tiles_ptr, best_ptr, arg_ptr, second_ptr, N, D, stride_n,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    r0 = tl.load(tiles_ptr + tl.program_id(0))
    rows = r0 + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < N
    cs = tl.load(cstart_ptr + rows, mask=row_ok, other=N)
    col_lo = (tl.min(cs, axis=0) // BLOCK_N) * BLOCK_N
    col_hi = tl.minimum(r0 + BLOCK_M, N)
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    second = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    arg = tl.full((BLOCK_M,), -1, tl.int64)
    x_rows = x_ptr + rows[:, None] * stride_n
    for c0 in range(col_lo, col_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            xr = tl.load(x_rows + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            xc = tl.load(x_ptr + cols[None, :] * stride_n + dd[:, None], mask=d_ok[:, None] & (cols < N)[None, :],
                         other=0.0)
            acc = tu.dot(xr, xc, acc, xr.dtype, "ieee", INTERPRET)
        valid = (cols[None, :] >= cs[:, None]) & (cols[None, :] < rows[:, None])
        s = tl.where(valid, acc, float("-inf"))
        tile_best = tl.max(s, axis=1)
        tile_arg = tl.argmax(s, axis=1, tie_break_left=True)
        tile_second = tl.max(tl.where(tl.arange(0, BLOCK_N)[None, :] == tile_arg[:, None], float("-inf"), s), axis=1)
        better = tile_best > best
        second = tl.maximum(tl.maximum(second, tile_second), tl.minimum(best, tile_best))
        arg = tl.where(better, tile_arg.to(tl.int64) + c0, arg)
        best = tl.maximum(best, tile_best)
    tl.store(best_ptr + rows, best, mask=row_ok)
    tl.store(arg_ptr + rows, tl.where(best > float("-inf"), arg, -1), mask=row_ok)
    tl.store(second_ptr + rows, second, mask=row_ok)


def _tiles(n: int, d: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, warps): 128×128 score tiles on two warpgroups, smaller when small."""
    bm = 128 if n >= 128 else max(16, triton.next_power_of_2(n))
    bd = 64 if d >= 64 else max(16, triton.next_power_of_2(d))
    return bm, bm, bd, 8 if bm == 128 else 4


def screened_launch(low: torch.Tensor, labels: torch.Tensor, order: torch.Tensor):
    """One launch on the rows rounded to fp16 and zero-padded (``screen.low_copy``):
    (perm, best, arg, second) in cluster-major positions."""
    n, d = low.shape
    bm, bn, bd, warps = _tiles(n, d)
    perm, xs, cstart, tiles = cluster_tiles(low, labels, order, bm)
    best = torch.empty(n, dtype=torch.float32, device=low.device)
    arg = torch.empty(n, dtype=torch.int64, device=low.device)
    second = torch.empty(n, dtype=torch.float32, device=low.device)
    _max_sim_kernel[(len(tiles),)](xs, cstart, tiles, best, arg, second, n, d, xs.stride(0),
                                   BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, INTERPRET=tu.interpreting(),
                                   num_warps=warps, num_stages=3)
    return perm, best, arg, second


def max_similarity(xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, progress: bool = False,
                   exact: bool = True):
    """Same contract as ``reference.max_similarity`` (``progress`` is accepted; one launch).
    ``exact=False`` returns the fp16-screened values and winners."""
    return screened.max_similarity(screened_launch, xn, labels, order, exact)
