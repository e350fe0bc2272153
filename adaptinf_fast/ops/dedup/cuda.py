"""CUDA backend of the within-cluster max similarity (kernels/max_sim.cu).

Same contract and layout as ``triton.max_similarity``: rows gathered cluster-major, 64-row tiles
longest walk first, ties to the earliest column.

* float32 rows, where the pipelined kernel runs (sm_80 or later, ``_C.pipeline_arch``): the same
  fp16 screening with float32 decisions as the Triton backend (``screened.py``; ``exact=False``
  returns the screened values).
* fp16/bf16 rows are multiplied in their own type on the pipelined kernel where it runs.
* Elsewhere float32 rows go to the WMMA kernel in split tf32 (about fp32 accuracy).
"""

from __future__ import annotations

import torch

from .. import _cuda_util as cu
from .. import screen
from . import screened
from .reference import cluster_tiles, to_original_order

TILE_ROWS = 64  # kernels/tile_mma.cuh kTileM and kernels/max_sim.cu adaptinf_max_sim_pipe (Layout<1>)


def _launch(xs: torch.Tensor, cstart: torch.Tensor, tiles: torch.Tensor, second: torch.Tensor | None = None):
    n, d = xs.shape
    best = torch.empty(n, dtype=torch.float32, device=xs.device)
    arg = torch.empty(n, dtype=torch.int64, device=xs.device)
    stream, device = cu.stream_and_device(xs)
    cu.kernels().max_sim(xs.data_ptr(), cu.DTYPE_CODES[xs.dtype], cstart.data_ptr(), tiles.data_ptr(), tiles.numel(),
                         best.data_ptr(), arg.data_ptr(), n, d, stream, device,
                         second.data_ptr() if second is not None else 0)
    return best, arg


def screened_launch(low: torch.Tensor, labels: torch.Tensor, order: torch.Tensor):
    """One pipelined launch on the fp16 rows (``screen.low_copy``): (perm, best, arg, second) in
    cluster-major positions."""
    perm, xs, cstart, tiles = cluster_tiles(low, labels, order, TILE_ROWS)
    second = torch.empty(low.shape[0], dtype=torch.float32, device=low.device)
    best, arg = _launch(xs, cstart, tiles, second)
    return perm, best, arg, second


def max_similarity(xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, progress: bool = False,
                   exact: bool = True):
    """Same contract as ``reference.max_similarity`` (``progress`` is accepted; one launch)."""
    if xn.dtype == torch.float32 and xn.shape[0] > 0 and \
            cu.pipelined(screen.screen_dtype(True), screen.padded_width(xn.shape[1]), xn.device):
        return screened.max_similarity(screened_launch, xn, labels, order, exact)
    dtype = cu.kernel_dtype(xn)
    perm, xs, cstart, tiles = cluster_tiles(xn.to(dtype), labels, order, TILE_ROWS)
    best, arg = _launch(xs, cstart, tiles)
    return to_original_order(perm, best, arg)
