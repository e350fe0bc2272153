"""CUDA backend of the random projection (kernels/project.cu): tensor-core tiles, R from Philox.

Same contract as ``triton.project_into``. The kernel writes one unscaled partial product per split
of P into a workspace; the splits are reduced here in a fixed order and scaled by 1/sqrt(k), so
results do not depend on scheduling.
"""

from __future__ import annotations

import math

import torch

from .. import _cuda_util as cu

TILE_B, TILE_N, TILE_P = 64, 64, 32  # kernels/tile_mma.cuh
PIPE_TILE = (128, 128)  # kernels/project.cu adaptinf_project_pipe: (batch rows, columns) of a block
PIPE_STEP = 64  # kernels/pipe.cuh kBK: P rows per stage (splits start on a stage, so on 16 bytes)
MAX_ROWS_PER_LAUNCH = 65535 * TILE_B  # batch tiles sit on the grid's y axis (at most 65535)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _splits(b: int, p: int, k: int, device: torch.device, tile: tuple[int, int]) -> int:
    """Splits of P so that small outputs still fill the GPU, each walking >= 4096 rows of P."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = _cdiv(b, tile[0]) * _cdiv(k, tile[1])
    return max(1, min(sms * 2 // tiles, p // 4096, 65535))


def project_into(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, row_offset: int,
                 splits: int | None = None) -> None:
    x = x.to(cu.kernel_dtype(x)).contiguous()
    for r0 in range(0, x.shape[0], MAX_ROWS_PER_LAUNCH):  # rows are independent
        _launch(x[r0 : r0 + MAX_ROWS_PER_LAUNCH], out[r0 : r0 + MAX_ROWS_PER_LAUNCH], seed, kind, row_offset, splits)


def _launch(x: torch.Tensor, out: torch.Tensor, seed: int, kind: str, row_offset: int, splits: int | None) -> None:
    b, p = x.shape
    k = out.shape[1]
    stream, device = cu.stream_and_device(x)
    pipelined = kind == "rademacher" and cu.kernels().pipeline_arch(cu.DTYPE_CODES[x.dtype], x.data_ptr(), x.stride(0),
                                                                    device)
    splits = splits or _splits(b, p, k, x.device, PIPE_TILE if pipelined else (TILE_B, TILE_N))
    step = PIPE_STEP if pipelined else TILE_P
    p_per_split = _cdiv(_cdiv(p, splits), step) * step
    splits = _cdiv(p, p_per_split)
    ws = torch.empty(splits, b, k, dtype=torch.float32, device=x.device)
    cu.kernels().project(x.data_ptr(), cu.DTYPE_CODES[x.dtype], ws.data_ptr(), b, p, k, x.stride(0), seed, row_offset,
                         p_per_split, kind, stream, device)
    out.add_(ws.sum(0) if splits > 1 else ws[0], alpha=1.0 / math.sqrt(k))
