"""Projected per-sample gradients of a Linear layer without materialising them (DESIGN §4.1).

For inputs a_bt (d_in) and output gradients g_bt (d_out) the per-sample weight gradient is
W_b = Σ_t m_bt g_bt a_btᵀ, flattened out-major like ``weight.grad`` (row o·d_in + i).

* ``mode="dense"``: ``vec(W_b) @ R[row_offset : row_offset + d_out·d_in] / sqrt(k)`` — exactly
  ``project`` of the flattened gradient. The outer product is formed one tile of output rows at a
  time (a batched GEMM over tokens), the tile is projected by the chosen backend's kernel into the
  running result, and dropped: peak extra memory is O(B·k + tile), never B·d_out·d_in.
  Consumes d_out·d_in rows of R.
* ``mode="factored"`` (LoGra-style Kronecker sketch, R = R_out ⊗ R_in): project every token's
  activations and gradients first (â = a R_in, ĝ = g R_out), then sum the small outer products
  ĝ âᵀ over tokens: output index p·k_in + q. Orders of magnitude fewer FLOPs, but a *different*
  sketch from the dense one (same JL scaling, not the same numbers). R_in is rows
  [row_offset, row_offset + d_in) of R with k_in columns, R_out the next d_out rows with k_out
  columns: it consumes d_in + d_out rows.

Both return each sample's exact squared Frobenius norm ‖W_b‖² (for GraNd) from the same pass.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ... import _validate
from ...backends import resolve
from . import _check_common

# Entries of one tile of per-sample gradients (B × rows-of-W × d_in) formed at a time (64 MiB fp32).
TILE_ENTRIES = 1 << 24


def default_factors(out_dim: int) -> tuple[int, int]:
    """(k_out, k_in) with k_out the largest divisor of out_dim not above sqrt(out_dim)."""
    k_out = max(d for d in range(1, math.isqrt(out_dim) + 1) if out_dim % d == 0)
    return k_out, out_dim // k_out


def _activations(x: Any, name: str) -> torch.Tensor:
    x = _validate.as_tensor(x, name)
    if x.dim() != 3:
        raise ValueError(f"{name} has {x.dim()} dims (shape {tuple(x.shape)}); expected (B, T, features)")
    if x.dtype not in _validate.FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; expected float32, float16 or bfloat16")
    return x


def _sq_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖Σ_t g_t a_tᵀ‖²_F per sample by the Gram identity Σ_{t,s} (g_t·g_s)(a_t·a_s), float64."""
    a, g = a.double(), g.double()
    return ((g @ g.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum((1, 2))


def project_linear_grads(
    inputs: Any,
    output_grads: Any,
    out_dim: int,
    *,
    seed: int = 0,
    kind: str = "rademacher",
    row_offset: int = 0,
    mask: Any = None,
    out: torch.Tensor | None = None,
    mode: str = "dense",
    factors: tuple[int, int] | None = None,
    nonfinite: str = "raise",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project every sample's Linear weight gradient Σ_t g_t a_tᵀ without materialising it.

    Args:
        inputs: A, (B, T, d_in) layer inputs (fp32/fp16/bf16).
        output_grads: G, (B, T, d_out) gradients of the loss w.r.t. the layer outputs.
        out_dim: k.
        seed, kind, row_offset: as in ``project``; dense mode uses rows
            [row_offset, row_offset + d_out·d_in), factored mode rows [row_offset, row_offset + d_in + d_out).
        mask: optional (B, T) bool/0-1; tokens where it is 0 contribute nothing (even NaN ones).
        out: optional float32 (B, k) the projection is added to (split-K over layers).
        mode: ``"dense"`` (exactly ``project`` of the flattened gradient) or ``"factored"``.
        factors: (k_out, k_in) with k_out·k_in = k for factored mode (default: ``default_factors``).
        nonfinite: ``"raise"`` when a sample's gradient has NaN/Inf (naming how many), or ``"zero"``:
            that sample's projection and norm are zeroed, with a warning.
        backend: projection backend.

    Returns:
        (projections float32 (B, k) — ``out`` itself when given —, squared gradient norms float32 (B,)).
    """
    a = _activations(inputs, "inputs")
    g = _activations(output_grads, "output_grads")
    if a.shape[:2] != g.shape[:2]:
        raise ValueError(f"inputs (B, T) = {tuple(a.shape[:2])} but output_grads (B, T) = {tuple(g.shape[:2])}")
    if g.device != a.device:
        raise ValueError(f"output_grads are on {g.device} but inputs are on {a.device}")
    b, t, d_in = a.shape
    d_out = g.shape[2]
    if mode not in ("dense", "factored"):
        raise ValueError(f"mode is {mode!r}; expected 'dense' or 'factored'")
    rows_used = d_out * d_in if mode == "dense" else d_in + d_out
    _check_common(out_dim, seed, kind, row_offset, rows_used)
    if mask is not None:
        m = _validate.as_tensor(mask, "mask")
        if tuple(m.shape) != (b, t):
            raise ValueError(f"mask has shape {tuple(m.shape)}; expected (B, T) = ({b}, {t})")
        keep = (m.to(g.device) != 0).unsqueeze(-1)  # `where`, not a product: NaN in padding stays out
        a = torch.where(keep, a, torch.zeros((), dtype=a.dtype, device=a.device))
        g = torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))
    if out is None:
        out = torch.zeros(b, out_dim, dtype=torch.float32, device=a.device)
    elif out.dtype != torch.float32 or tuple(out.shape) != (b, out_dim) or out.device != a.device:
        raise ValueError(f"out must be float32 of shape ({b}, {out_dim}) on {a.device}")
    _, impl = resolve("project", backend, a.device)
    af, gf = a.float(), g.float()
    result = torch.zeros(b, out_dim, dtype=torch.float32, device=a.device)
    if mode == "dense":
        sq = torch.zeros(b, dtype=torch.float64, device=a.device)
        step = max(1, TILE_ENTRIES // max(1, b * d_in))
        for o0 in range(0, d_out, step):
            o1 = min(d_out, o0 + step)
            tile = (gf[:, :, o0:o1].transpose(1, 2) @ af).reshape(b, (o1 - o0) * d_in)  # (B, rows·d_in)
            sq += tile.double().pow(2).sum(1)
            impl.project_into(tile, result, seed=seed, kind=kind, row_offset=row_offset + o0 * d_in)
    else:
        k_out, k_in = factors if factors is not None else default_factors(out_dim)
        if k_out * k_in != out_dim or k_out < 1 or k_in < 1:
            raise ValueError(f"factors {factors} must be positive with k_out·k_in = out_dim = {out_dim}")
        a_hat = torch.zeros(b * t, k_in, device=a.device)
        g_hat = torch.zeros(b * t, k_out, device=a.device)
        impl.project_into(af.reshape(b * t, d_in), a_hat, seed=seed, kind=kind, row_offset=row_offset)
        impl.project_into(gf.reshape(b * t, d_out), g_hat, seed=seed, kind=kind, row_offset=row_offset + d_in)
        result = (g_hat.view(b, t, k_out).transpose(1, 2) @ a_hat.view(b, t, k_in)).reshape(b, out_dim)
        sq = _sq_norms(af, gf) if t * (d_in + d_out) < d_in * d_out else (gf.transpose(1, 2) @ af).double().pow(2).sum((1, 2))
    bad = ~torch.isfinite(sq)
    if bad.any():
        which = bad.nonzero().flatten()[:5].tolist()
        if nonfinite != "zero":
            raise ValueError(f"{int(bad.sum())} sample(s) have NaN/Inf gradients (first: {which}); "
                             "clean the inputs or pass nonfinite='zero'")
        warnings.warn(f"zeroed {int(bad.sum())} sample(s) with NaN/Inf gradients (first: {which})",
                      RuntimeWarning, stacklevel=2)
        result[bad] = 0
        sq[bad] = 0
    out.add_(result)
    return out, sq.float()
