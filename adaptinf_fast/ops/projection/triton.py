"""Triton kernels for the random projection (DESIGN §4.1).

``project_into``: out += x @ R[row_offset : row_offset + P] / sqrt(k), with R generated in-kernel
from Philox exactly as ``reference.py`` documents. A program owns a (batch tile × column tile) of
the output and walks its slice of P: each R tile (BLOCK_P × BLOCK_N) is generated once and reused
by every row of the batch tile. When the output has too few tiles to fill the GPU, P is split
across programs whose partial sums are written to a workspace and reduced in a fixed order
(deterministic, no atomics).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _triton_util as tu


@triton.jit
def r_tile(seed, rows, cols, KIND: tl.constexpr):
    """Unscaled R[rows, cols] as float32, rows int64 (BP,), cols int32 (BN,) -> (BP, BN).

    Rademacher: one Philox block per (row, 128-column block); the tile's columns must lie in one
    128-column block (BN divides 128 and tiles are aligned), so the block counter is a scalar.
    Gaussian: one Philox block per (row, 4-column block), computed per entry.
    """
    c0 = (rows & 0xFFFFFFFF).to(tl.uint32)
    c1 = (rows >> 32).to(tl.uint32)
    if KIND == 0:
        zero = c0 * 0
        blk = zero + (tl.min(cols, axis=0) >> 7).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, blk, zero)
        wi = ((cols >> 5) & 3)[None, :]
        word = tl.where(wi == 0, w0[:, None], tl.where(wi == 1, w1[:, None], tl.where(wi == 2, w2[:, None], w3[:, None])))
        bit = (word >> (cols & 31).to(tl.uint32)[None, :]) & 1
        return 1.0 - 2.0 * bit.to(tl.float32)
    else:
        zero2 = (c0[:, None] * 0) + (cols[None, :] * 0).to(tl.uint32)
        blk2 = zero2 + (cols >> 2).to(tl.uint32)[None, :]
        w0, w1, w2, w3 = tl.philox(seed, zero2 + c0[:, None], zero2 + c1[:, None], blk2, zero2)
        second = ((cols >> 1) & 1)[None, :] == 1
        a = tl.where(second, w2, w0)
        b = tl.where(second, w3, w1)
        u1 = (((a >> 9) << 1) | 1).to(tl.float32) * 5.9604644775390625e-08
        u2 = (((b >> 9) << 1) | 1).to(tl.float32) * 5.9604644775390625e-08
        r = tl.sqrt(-2.0 * tl.log(u1))
        theta = 6.283185307179586 * u2
        return tl.where((cols & 1)[None, :] == 1, r * tl.sin(theta), r * tl.cos(theta))


@triton.jit
def _project_kernel(
    x_ptr, ws_ptr, B, P, K, stride_xb, stride_xp, seed, row_offset, p_per_split,
    KIND: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    p_start = pid_s.to(tl.int64) * p_per_split
    p_end = tl.minimum(p_start + p_per_split, P)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    x_rows = x_ptr + offs_b.to(tl.int64)[:, None] * stride_xb
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        p_ok = offs_p < p_end
        xt = tl.load(x_rows + offs_p[None, :] * stride_xp, mask=b_ok[:, None] & p_ok[None, :], other=0.0)
        rt = r_tile(seed, row_offset + offs_p, offs_n, KIND)
        rt = tl.where(p_ok[:, None], rt, 0.0)
        acc = tu.dot(xt, rt, acc, DOT_DTYPE, PRECISION, INTERPRET)
    ws = ws_ptr + (pid_s.to(tl.int64) * B + offs_b.to(tl.int64))[:, None] * K + offs_n[None, :]
    tl.store(ws, acc, mask=b_ok[:, None] & (offs_n < K)[None, :])


def _config(b: int, p: int, k: int, device: torch.device):
    block_b = min(128, max(16, triton.next_power_of_2(b)))
    block_n = 128 if k > 64 else 64
    block_p = 64 if block_b <= 64 else 32
    tiles = triton.cdiv(b, block_b) * triton.cdiv(k, block_n)
    # enough programs for the GPU, each with at least a few thousand rows of P to walk
    splits = max(1, min(tu.sm_count(device) * 2 // max(tiles, 1), p // 4096)) if device.type == "cuda" else 1
    return block_b, block_n, block_p, splits


def project_into(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, row_offset: int) -> None:
    b, p = x.shape
    k = out.shape[1]
    block_b, block_n, block_p, splits = _config(b, p, k, x.device)
    p_per_split = triton.cdiv(triton.cdiv(p, splits), block_p) * block_p
    splits = triton.cdiv(p, p_per_split)
    ws = torch.empty(splits, b, k, dtype=torch.float32, device=x.device)
    if x.dtype in (torch.float16, torch.bfloat16):
        dot_dtype, precision = tu.tl_dtype(x.dtype), "ieee"
    else:  # fp32/fp64: R is exact in tf32; tf32x3 keeps x to ~fp32 accuracy on tensor cores
        x = x.to(torch.float32)
        dot_dtype, precision = tl.float32, ("tf32x3" if x.is_cuda else "ieee")
    grid = (triton.cdiv(b, block_b), triton.cdiv(k, block_n), splits)
    _project_kernel[grid](
        x, ws, b, p, k, x.stride(0), x.stride(1), seed, row_offset, p_per_split,
        KIND=0 if kind == "rademacher" else 1, BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_P=block_p,
        DOT_DTYPE=dot_dtype, PRECISION=precision, INTERPRET=tu.interpreting(), num_warps=8 if block_b >= 128 else 4,
    )
    out.add_(ws.sum(0) if splits > 1 else ws[0], alpha=1.0 / math.sqrt(k))
