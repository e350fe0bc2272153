"""Argument checks shared by the public ops. Errors name the argument and the expectation."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Accept a torch tensor, a NumPy array (no copy when contiguous), any DLPack array — CuPy, JAX,
    … — (no copy, on its device), or anything NumPy can view."""
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        try:
            return torch.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError) as exc:
            raise TypeError(f"{name}: this {type(x).__name__} cannot be shared through DLPack ({exc})") from exc
    if isinstance(x, np.ndarray):
        with warnings.catch_warnings():  # read-only memmaps: inputs are never written to
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array; got {type(x).__name__}") from exc


def float_matrix(x: Any, name: str, *, shape_hint: str = "(N, D)") -> torch.Tensor:
    """A 2-D floating tensor (fp32/fp16/bf16/fp64)."""
    x = as_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} has {x.dim()} dims (shape {tuple(x.shape)}); expected {shape_hint}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; expected float32, float16 or bfloat16")
    return x


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """Bool mask of rows holding NaN/Inf. One cheap pass (a row's sum is finite unless it holds
    NaN/Inf or overflows), then an exact check of the few suspicious rows."""
    if x.dim() == 1:
        return ~torch.isfinite(x)
    suspicious = ~torch.isfinite(x.sum(dim=-1, dtype=torch.float32 if x.dtype != torch.float64 else None))
    if suspicious.any():
        idx = suspicious.nonzero().flatten()
        suspicious[idx] = ~torch.isfinite(x[idx]).all(dim=-1)
    return suspicious


def check_finite(x: torch.Tensor, name: str, nonfinite: str) -> torch.Tensor:
    """Raise on rows holding NaN/Inf (default), or zero them and warn with the count (``"zero"``)."""
    if nonfinite not in ("raise", "zero"):
        raise ValueError(f"nonfinite is {nonfinite!r}; expected 'raise' or 'zero'")
    if x.numel() == 0:
        return x
    bad = nonfinite_rows(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x
    rows = bad.nonzero().flatten()[:5].tolist()
    if nonfinite == "raise":
        raise ValueError(
            f"{name} has {n_bad} row(s) with NaN or Inf (first: {rows}); clean them or pass nonfinite='zero'"
        )
    warnings.warn(f"{name}: zeroed {n_bad} row(s) with NaN or Inf (first: {rows})", RuntimeWarning, stacklevel=3)
    x = x.clone()
    x[bad] = 0
    return x


def int_vector(x: Any, name: str, length: int | None = None) -> torch.Tensor:
    x = as_tensor(x, name)
    if x.dim() != 1:
        raise ValueError(f"{name} has {x.dim()} dims (shape {tuple(x.shape)}); expected a 1-D vector")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} has dtype {x.dtype}; expected an integer dtype")
    if length is not None and x.numel() != length:
        raise ValueError(f"{name} has {x.numel()} entries; expected {length} (one per row of x)")
    return x.long()


def permutation(order: Any, n: int, name: str = "order") -> torch.Tensor:
    order = int_vector(order, name, n)
    if n and (order.min() < 0 or order.max() >= n or torch.bincount(order.cpu(), minlength=n).max() != 1):
        raise ValueError(f"{name} must be a permutation of 0..{n - 1}")
    return order


def positive_int(v: Any, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} is {v}; expected >= {minimum}")
    return int(v)
