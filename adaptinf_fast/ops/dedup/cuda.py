"""CUDA backend of the within-cluster max similarity (kernels/max_sim.cu), on each cluster's triangle.

Same contract and layout as ``triton.max_similarity``: rows gathered cluster-major, 64-row tiles
launched longest walk first, results mapped back to the original indices. float32 rows are
multiplied in split tf32 (about fp32 accuracy); fp16/bf16 rows (semdedup's screening pass) in
their own type with fp32 accumulation.
"""

from __future__ import annotations

import torch

from .. import _cuda_util as cu
from .reference import cluster_tiles, to_original_order

TILE_ROWS = 64  # kernels/tile_mma.cuh kTileM


def max_similarity(xn: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, progress: bool = False):
    """Same contract as ``reference.max_similarity`` (``progress`` is accepted; one launch)."""
    n, d = xn.shape
    dtype = cu.kernel_dtype(xn)
    perm, xs, cstart, tiles = cluster_tiles(xn.to(dtype), labels, order, TILE_ROWS)
    best = torch.empty(n, dtype=torch.float32, device=xn.device)
    arg = torch.empty(n, dtype=torch.int64, device=xn.device)
    stream, device = cu.stream_and_device(xn)
    cu.kernels().max_sim(xs.data_ptr(), cu.DTYPE_CODES[dtype], cstart.data_ptr(), tiles.data_ptr(), tiles.numel(),
                         best.data_ptr(), arg.data_ptr(), n, d, stream, device)
    return to_original_order(perm, best, arg)
