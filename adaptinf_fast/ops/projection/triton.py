"""Triton kernels for the random projection (DESIGN §4.1).

``project_into``: out += x @ R[row_offset : row_offset + P] / sqrt(k), with R generated in-kernel
from Philox exactly as ``reference.py`` documents. A program owns a (batch tile × 128 columns) block
of the output and walks its slice of P in BLOCK_P steps; each step generates one R tile and
multiplies it with the whole batch tile, so every random word is computed once per batch tile.
When the output has too few tiles to fill the GPU, P is split across programs whose partial sums
are written to a workspace and reduced in a fixed order (deterministic, no atomics).

How the R tile stays cheap (the kernel is bound by instruction issue, not by the tensor cores,
unless the tile is generated well; ``bench/static_check.py`` measures this on the SASS):

* The tile is built **transposed**, as (128 columns, BLOCK_P rows) with rows on the fast axis, so
  Triton's default layout gives each lane one R row and all of its columns: one Philox block per
  row per lane (not one per entry), and every column index, hence every bit position, is a
  compile-time constant. ``tl.trans`` then hands it to ``tl.dot`` as the (BLOCK_P, 128) operand.
* Rademacher entries are written straight as bf16 (fp16) bit patterns, 0x3F80 (0x3C00) | bit << 15:
  ±1 is exact in 16 bits, so fp16/bf16 inputs multiply at the full tensor rate and fp32 inputs are split exactly into
  three bf16 parts (x = hi + mid + lo, each product exact) — three bf16 MMAs instead of tf32x3's
  three tf32 MMAs at half the rate, and exact to fp32 accumulation.
* Gaussian: one Philox block gives 4 consecutive columns (two Box–Muller pairs); the kernel keeps
  four accumulators, one per position inside the block, so each block is computed once and all
  four words are used. Columns are stored back interleaved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .. import _triton_util as tu

BLOCK_N = 128  # columns per program: one Rademacher Philox block per row


@triton.jit
def _philox_words(seed, rows, block):
    """Philox4x32-10 block ``block`` of each row: four uint32 tensors shaped like ``rows`` (int64)."""
    c0 = (rows & 0xFFFFFFFF).to(tl.uint32)
    c1 = (rows >> 32).to(tl.uint32)
    zero = c0 * 0
    return tl.philox(seed, c0, c1, zero + block, zero)


@triton.jit
def rademacher_tile(seed, rows, col0, R_DTYPE: tl.constexpr):
    """Unscaled R[rows, col0 : col0 + 128] as exact ±1 in R_DTYPE (bf16 or fp16) for rows int64 (BP,),
    col0 % 128 == 0 -> (BP, 128)."""
    w0, w1, w2, w3 = _philox_words(seed, rows, (col0 >> 7).to(tl.uint32))
    cols = tl.arange(0, 128)[:, None]  # transposed: (128, BP), rows on the fast axis
    wi = cols >> 5
    word = tl.where(wi == 0, w0[None, :], tl.where(wi == 1, w1[None, :], tl.where(wi == 2, w2[None, :], w3[None, :])))
    bit = (word >> (cols & 31).to(tl.uint32)) & 1
    one = 0x3C00 if R_DTYPE == tl.float16 else 0x3F80  # +1 in fp16 / bf16; the sign bit makes it -1
    return tl.trans(((bit << 15) | one).to(tl.uint16).to(R_DTYPE, bitcast=True))


@triton.jit
def _unit(w):
    """u(w) = (2 (w >> 9) + 1) 2^-24 in (0, 1), exact in float32 (reference.py)."""
    return (((w >> 9) << 1) | 1).to(tl.float32) * 5.9604644775390625e-08


MATH_INTERPRET, MATH_ACCURATE, MATH_FAST = 0, 1, 2  # the kernels' MATH constexpr


@triton.jit
def _box_muller(wa, wb, MATH: tl.constexpr):
    """(r cos θ, r sin θ) with r = sqrt(-2 ln u(wa)), θ = 2π u(wb) (reference.py).

    MATH_ACCURATE: correctly rounded sqrt, libdevice log and sinpi/cospi of 2u (exact argument
    reduction, ~1 ulp); MATH_FAST: the hardware approximations (abs. error ~1e-6, far below the
    2^-8 / 2^-11 rounding of a bf16 / fp16 operand); MATH_INTERPRET: what the CPU interpreter has.
    """
    ua = _unit(wa)
    ub = _unit(wb)
    if MATH == 2:  # MATH_FAST
        r = tl.sqrt(-2.0 * libdevice.fast_logf(ua))
        theta = 6.283185307179586 * ub
        return r * libdevice.fast_cosf(theta), r * libdevice.fast_sinf(theta)
    elif MATH == 1:  # MATH_ACCURATE
        r = tl.sqrt_rn(-2.0 * libdevice.log(ua))
        return r * libdevice.cospi(2.0 * ub), r * libdevice.sinpi(2.0 * ub)
    else:
        r = tl.sqrt_rn(-2.0 * tl.log(ua))
        theta = 6.283185307179586 * ub
        return r * tl.cos(theta), r * tl.sin(theta)


@triton.jit
def gaussian_tiles(seed, rows, col0, BLOCK_N: tl.constexpr, MATH: tl.constexpr):
    """Unscaled Gaussian R for columns col0 + 4g + e (g < BLOCK_N/4, e < 4) as four float32
    (BP, BLOCK_N/4) tiles, e = 0..3: one Philox block per (row, g), all four words used."""
    g = tl.arange(0, BLOCK_N // 4)[:, None]  # transposed: (groups, BP), rows on the fast axis
    blk = ((col0 >> 2) + g).to(tl.uint32)
    c0 = (rows & 0xFFFFFFFF).to(tl.uint32)[None, :] + (blk * 0)
    c1 = (rows >> 32).to(tl.uint32)[None, :] + (blk * 0)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, blk + c0 * 0, c0 * 0)
    z0, z1 = _box_muller(w0, w1, MATH)
    z2, z3 = _box_muller(w2, w3, MATH)
    return tl.trans(z0), tl.trans(z1), tl.trans(z2), tl.trans(z3)


@triton.jit
def _split3_dot(x, r, acc, INTERPRET: tl.constexpr):
    """acc + x @ r for float32 x and an exact bf16 r: x = hi + mid + lo exactly (8 + 8 + 8 bits),
    each part times ±1 is exact, so this is fp32-accurate at the bf16 tensor rate."""
    hi = x.to(tl.bfloat16)
    rest = x - hi.to(tl.float32)
    mid = rest.to(tl.bfloat16)
    lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
    acc = tu.dot(hi, r, acc, tl.bfloat16, "ieee", INTERPRET)
    acc = tu.dot(mid, r, acc, tl.bfloat16, "ieee", INTERPRET)
    return tu.dot(lo, r, acc, tl.bfloat16, "ieee", INTERPRET)


@triton.jit
def _project_kernel(
    x_ptr, ws_ptr, B, P, K, stride_xb, stride_xp, seed, row_offset, p_per_split,
    KIND: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    X_FP32: tl.constexpr, MATH: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    col0 = pid_n * BLOCK_N
    p_start = pid_s.to(tl.int64) * p_per_split
    p_end = tl.minimum(p_start + p_per_split, P)
    x_rows = x_ptr + offs_b.to(tl.int64)[:, None] * stride_xb
    ws_rows = ws_ptr + (pid_s.to(tl.int64) * B + offs_b.to(tl.int64))[:, None] * K
    if KIND == 0:
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for p0 in range(p_start, p_end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
            xt = tl.load(x_rows + offs_p[None, :] * stride_xp, mask=b_ok[:, None] & (offs_p < p_end)[None, :], other=0.0)
            rt = rademacher_tile(seed, row_offset + offs_p, col0, DOT_DTYPE)
            if X_FP32:  # exact 3×bf16 split
                acc = _split3_dot(xt, rt, acc, INTERPRET)
            else:
                acc = tu.dot(xt, rt, acc, DOT_DTYPE, PRECISION, INTERPRET)
        offs_n = col0 + tl.arange(0, BLOCK_N)
        tl.store(ws_rows + offs_n[None, :], acc, mask=b_ok[:, None] & (offs_n < K)[None, :])
    else:
        acc0 = tl.zeros((BLOCK_B, BLOCK_N // 4), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_B, BLOCK_N // 4), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_B, BLOCK_N // 4), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_B, BLOCK_N // 4), dtype=tl.float32)
        for p0 in range(p_start, p_end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
            xt = tl.load(x_rows + offs_p[None, :] * stride_xp, mask=b_ok[:, None] & (offs_p < p_end)[None, :], other=0.0)
            g0, g1, g2, g3 = gaussian_tiles(seed, row_offset + offs_p, col0, BLOCK_N, MATH)
            acc0 = tu.dot(xt, g0, acc0, DOT_DTYPE, PRECISION, INTERPRET)
            acc1 = tu.dot(xt, g1, acc1, DOT_DTYPE, PRECISION, INTERPRET)
            acc2 = tu.dot(xt, g2, acc2, DOT_DTYPE, PRECISION, INTERPRET)
            acc3 = tu.dot(xt, g3, acc3, DOT_DTYPE, PRECISION, INTERPRET)
        offs_n = col0 + 4 * tl.arange(0, BLOCK_N // 4)
        mask = b_ok[:, None]
        tl.store(ws_rows + offs_n[None, :], acc0, mask=mask & (offs_n < K)[None, :])
        tl.store(ws_rows + (offs_n + 1)[None, :], acc1, mask=mask & (offs_n + 1 < K)[None, :])
        tl.store(ws_rows + (offs_n + 2)[None, :], acc2, mask=mask & (offs_n + 2 < K)[None, :])
        tl.store(ws_rows + (offs_n + 3)[None, :], acc3, mask=mask & (offs_n + 3 < K)[None, :])


@dataclass(frozen=True)
class Config:
    """One launch's tiling. ``splits``: programs sharing P (partial sums reduced in fixed order)."""

    block_b: int
    block_p: int
    num_warps: int
    num_stages: int
    splits: int


def _config(b: int, p: int, k: int, dtype: torch.dtype, kind: str, device: torch.device) -> Config:
    """Tiles chosen on the SASS of ``bench/static_check.py``: the largest that stay spill-free for
    every specialisation.

    sm_90, Rademacher fp16/bf16: up to 128 rows, a 128-row batch tile on one warpgroup (~210
    registers, 64 KiB of shared memory) lets two programs share an SM, so one's R generation
    overlaps the other's MMAs; above 128 rows, a 256-row tile on two warpgroups (~205 registers,
    113 KiB) generates each R tile once for both: the R tile's 16-bit shared stores (Triton's layout
    for the transposed tile) are then spread over twice the MMAs, which lifts the shared-memory
    bound from 0.64 to 0.77 and the serial bound from 0.57 to 0.66 at the same issue bound (1.00).
    fp32 (three MMAs per step) takes 64 rows. Gaussian is bound by its transcendental functions.
    sm_80 (mma.sync keeps both operands' fragments in registers): at most 128 rows, on twice the warps.
    """
    pow2 = max(16, triton.next_power_of_2(b))
    hopper = tu.capability(device)[0] >= 9
    stages = 3
    if kind == "rademacher" and dtype != torch.float32:
        block_b, block_p, warps = (256, 64, 8) if hopper and b > 128 else (min(128, pow2), 64, 4)
    elif kind == "rademacher":
        block_b, block_p, warps = min(64, pow2), 32, 4
        stages = 3 if block_b > 32 else 2  # ptxas spills a few prologue registers at 3 stages
    elif dtype == torch.float32:
        block_b, block_p = min(128, pow2), 16
        warps, stages = (8, 3) if block_b >= 128 else (4, 2)
    else:
        block_b, block_p = min(128, pow2), 32
        warps = 8 if block_b >= 128 else 4
    if not hopper and block_b >= 64:
        warps = 8
    tiles = triton.cdiv(b, block_b) * triton.cdiv(k, BLOCK_N)
    # enough programs for two per SM, each walking at least a few thousand rows of P
    splits = max(1, min(tu.sm_count(device) * 2 // max(tiles, 1), p // 4096)) if not tu.interpreting() else 1
    return Config(block_b, block_p, num_warps=warps, num_stages=stages, splits=splits)


def aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its rows start on 16-element boundaries and P is a multiple of 16 (Triton
    then specialises both and loads 16-byte vectors asynchronously, tails included), else a
    zero-padded copy of width ceil(P / 16)·16: unaligned rows force scalar loads through registers,
    which doubles the main loop and spills. The copy is one pass over x (by bandwidth arithmetic
    ~4% of a k=8192 projection, not measured); the padded columns are zero and add nothing."""
    b, p = x.shape
    if x.stride(1) == 1 and (x.stride(0) % 16 == 0 or b == 1) and x.storage_offset() % 16 == 0 and p % 16 == 0:
        return x
    padded = torch.zeros(b, triton.cdiv(p, 16) * 16, dtype=x.dtype, device=x.device)
    padded[:, :p] = x
    return padded


def project_into(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, row_offset: int) -> None:
    b, p = x.shape
    k = out.shape[1]
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        x = x.to(torch.float32)
    x = aligned_rows(x)
    p = x.shape[1]
    cfg = _config(b, p, k, x.dtype, kind, x.device)
    p_per_split = triton.cdiv(triton.cdiv(p, cfg.splits), cfg.block_p) * cfg.block_p
    splits = triton.cdiv(p, p_per_split)
    ws = torch.empty(splits, b, k, dtype=torch.float32, device=x.device)
    x_fp32 = x.dtype == torch.float32
    if not x_fp32:
        dot_dtype, precision = tu.tl_dtype(x.dtype), "ieee"
    elif kind == "rademacher":  # exact 3×bf16 split inside the kernel
        dot_dtype, precision = tl.bfloat16, "ieee"
    else:  # Gaussian R is not exact in bf16: tf32x3 keeps ~fp32 accuracy on tensor cores
        dot_dtype, precision = tl.float32, ("ieee" if tu.interpreting() else "tf32x3")
    grid = (triton.cdiv(b, cfg.block_b), triton.cdiv(k, BLOCK_N), splits)
    _project_kernel[grid](
        x, ws, b, p, k, x.stride(0), x.stride(1), seed, row_offset, p_per_split,
        KIND=0 if kind == "rademacher" else 1, BLOCK_B=cfg.block_b, BLOCK_N=BLOCK_N, BLOCK_P=cfg.block_p,
        X_FP32=x_fp32, MATH=MATH_INTERPRET if tu.interpreting() else MATH_ACCURATE if x_fp32 else MATH_FAST,
        DOT_DTYPE=dot_dtype, PRECISION=precision,
        INTERPRET=tu.interpreting(), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    out.add_(ws.sum(0) if splits > 1 else ws[0], alpha=1.0 / math.sqrt(k))
