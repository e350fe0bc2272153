"""Training-free merging of LoRA adapters, one layer at a time (the plain-torch reference).

A LoRA layer's update is ΔW = scale · B A (B: (out, r), A: (r, in)). Merging works on the updates
of T adapters trained for T tasks from the same starting adapter:

* ``average``: ΔW = mean_t ΔW_t.
* ``ties`` (TIES-merging, Yadav et al. 2023): trim each ΔW_t to its ``density`` largest-magnitude
  entries, elect each entry's sign as the sign of the trimmed sum, average the trimmed entries that
  agree with it (disjoint mean), times ``lam``.

The merged ΔW is written back as a rank-``rank`` LoRA pair by truncated SVD, split as
B' = U √S / √scale, A' = √S Vᵀ / √scale (exact when ΔW has rank <= ``rank``).
"""

from __future__ import annotations

import torch

METHODS = ("average", "ties")


def merged_delta(deltas: torch.Tensor, method: str, density: float = 0.2, lam: float = 1.0) -> torch.Tensor:
    """(T, out, in) task updates -> (out, in) merged update (float32)."""
    d = deltas.float()
    if method == "average":
        return d.mean(0)
    if method != "ties":
        raise ValueError(f"merge method {method!r}; expected one of {METHODS}")
    keep = max(1, int(round(density * d[0].numel())))
    flat = d.reshape(d.shape[0], -1)
    thresh = flat.abs().topk(keep, dim=1).values[:, -1:]
    trimmed = torch.where(flat.abs() >= thresh, flat, torch.zeros_like(flat))
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    total = (trimmed * agree).sum(0)
    count = agree.sum(0).clamp_min(1)
    return (lam * total / count).reshape(d.shape[1:])


def factors(delta: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW (out, in) -> (B (out, rank), A (rank, in)) with scale · B A = the rank-``rank`` truncation."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, s.shape[0])
    root = (s[:r] / scale).sqrt()
    b = torch.zeros(delta.shape[0], rank, dtype=torch.float32, device=delta.device)
    a = torch.zeros(rank, delta.shape[1], dtype=torch.float32, device=delta.device)
    b[:, :r] = u[:, :r] * root
    a[:r] = root[:, None] * vh[:r]
    return b, a


def merge_layers(layers: list[list[tuple[torch.Tensor, torch.Tensor]]], scale: float, method: str, rank: int,
                 density: float = 0.2, lam: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``layers[l][t]`` = (B, A) of layer l in adapter t -> merged (B, A) per layer."""
    out = []
    for per_task in layers:
        deltas = torch.stack([scale * b.float() @ a.float() for b, a in per_task])
        out.append(factors(merged_delta(deltas, method, density, lam), rank, scale))
    return out
