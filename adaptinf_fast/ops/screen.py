"""16-bit screening with float32 decisions, shared by the k-means and dedup kernels (DESIGN §4.2–4.3).

A kernel multiplies rows rounded to fp16/bf16 on tensor cores (fp32 accumulation) and keeps, per
row, the best and the second-best screened score. Every screened dot product is within a bound of
the float32 dot product of the unrounded rows that the torch reference computes:

    |fl(x̃·ỹ) − fl32(x·y)| ≤ ‖x̃ − x‖·‖ỹ‖ + ‖x‖·‖ỹ − y‖ + γ_D (‖x̃‖‖ỹ‖ + ‖x‖‖y‖),

(products of 16-bit values are exact in fp32; γ_D = D·2⁻²² covers a truncating tensor-core
accumulation and the reference's rounded one.) ‖x̃ − x‖ is the actual rounding error of each row,
measured here, so the bound is tight for real data. A row whose screened gap between best and
second best exceeds twice its bound has the same winner in float32 arithmetic; the other rows are
recomputed in float32. Decisions therefore equal the reference's; reported values are recomputed
in float32 for the winners.
"""

from __future__ import annotations

import torch

ROWS_PER_CHUNK = 1 << 16


def screen_dtype(unit_rows: bool) -> torch.dtype:
    """fp16 for L2-normalised rows (|entries| <= 1: 11-bit significands, 8× tighter bounds than
    bf16), bf16 otherwise (fp16 could overflow)."""
    return torch.float16 if unit_rows else torch.bfloat16


def padded_width(d: int) -> int:
    """Row width of the kernels' 16-bit copies: a multiple of 16, so every row starts 32-byte aligned
    and the kernels load full 16-byte vectors without tail masks (the padding is zero)."""
    return -(-d // 16) * 16


def low_copy(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x rounded to ``dtype``, zero-padded to ``padded_width`` columns: (N, padded_width(D))."""
    n, d = x.shape
    width = padded_width(d)
    if width == d:
        return x.to(dtype).contiguous()
    out = torch.zeros(n, width, dtype=dtype, device=x.device)
    out[:, :d] = x
    return out


def rounding_error(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x rounded to ``dtype`` and zero-padded (N, padded_width(D)), ‖x − round(x)‖ (N,) float32,
    ‖x‖ (N,) float32), in row chunks."""
    n, d = x.shape
    low = torch.zeros(n, padded_width(d), dtype=dtype, device=x.device)
    err = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    norm = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for r0 in range(0, x.shape[0], ROWS_PER_CHUNK):
        xc = x[r0 : r0 + ROWS_PER_CHUNK].float()
        lc = xc.to(dtype)
        low[r0 : r0 + ROWS_PER_CHUNK, :d] = lc
        err[r0 : r0 + ROWS_PER_CHUNK] = torch.linalg.vector_norm(xc - lc.float(), dim=1)
        norm[r0 : r0 + ROWS_PER_CHUNK] = torch.linalg.vector_norm(xc, dim=1)
    return low, err, norm


def accumulation(d: int) -> float:
    return d * 2.0**-22


def dot_bound(ex: torch.Tensor, nx: torch.Tensor, ey: float, ny: float, d: int) -> torch.Tensor:
    """Per row of x, the largest |screened x·y − fp32 x·y| over every y with ‖y‖ <= ny, ‖ỹ − y‖ <= ey."""
    g = accumulation(d)
    return ex * (ny + ey) + nx * ey + g * ((nx + ex) * (ny + ey) + nx * ny)


def undecided(gap: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Rows whose winner may differ in float32: the screened gap between best and second best is
    not above twice the bound (NaN, as from a tie at ±inf, counts as undecided)."""
    return ~(gap > 2.0 * bound)
