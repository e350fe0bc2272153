"""Training-free merging of LoRA adapters, one layer at a time (the plain-torch reference).

A LoRA layer's update is ΔW = scale · B A (B: (out, r), A: (r, in)). Merging works on T adapters
trained for T tasks from the same starting adapter:

* ``average``: ΔW = mean_t ΔW_t.
* ``ties`` (TIES-merging, Yadav et al. 2023): trim each ΔW_t to its ``density`` largest-magnitude
  entries, elect each entry's sign as the sign of the trimmed sum, average the trimmed entries that
  agree with it (disjoint mean), times ``lam``.
* ``copa`` (CoPA-Merging, renamed RobustMerge, arXiv 2502.17159; as its official code computes it,
  ``llava/model/builder.py::load_and_merge_pretrained_model``): A and B are merged separately, never
  their product. Each task's A_t and B_t are pruned by magnitude, each matrix on its own (``prune``:
  ``keep`` = 0.2 keeps the entries at or above the ⌊0.8 n⌋-th smallest |value|, about 20%); each
  rank row i of A_t gets the coefficient s_t[i] = ‖A_t[i]‖₁ / ‖Â_t[i]‖₁ (the mass pruning removed),
  raised per task to its value at sorted position ⌊(1 − ``clamp``) r⌋ (``coefficients``); then
  A* = lam Σ_t Â_t and B*[:, i] = lam Σ_t s_t[i] B̂_t[:, i] / Σ_t s_t[i] (lam = 2.0). The merged pair
  keeps the tasks' rank: no SVD.

``average`` and ``ties`` write the merged ΔW back as a rank-``rank`` LoRA pair by truncated SVD,
split as B' = U √S / √scale, A' = √S Vᵀ / √scale (exact when ΔW has rank <= ``rank``).
"""

from __future__ import annotations

import torch

METHODS = ("average", "ties", "copa")
DEFAULT_LAM = {"average": 1.0, "ties": 1.0, "copa": 2.0}  # copa: the official fuse_weight


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
                 density: float = 0.2, lam: float | None = None, keep: float = 0.2,
                 clamp: float = 0.2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``layers[l][t]`` = (B, A) of layer l in adapter t -> merged (B, A) per layer."""
    lam = DEFAULT_LAM[method] if lam is None else lam
    if method == "copa":
        return [copa_layer(per_task, keep, clamp, lam) for per_task in layers]
    out = []
    for per_task in layers:
        deltas = torch.stack([scale * b.float() @ a.float() for b, a in per_task])
        out.append(factors(merged_delta(deltas, method, density, lam), rank, scale))
    return out


def prune(w: torch.Tensor, keep: float) -> torch.Tensor:
    """``w`` with every entry below the ⌊(1 − keep) n⌋-th smallest magnitude zeroed (CoPA's
    ``kthvalue`` threshold over the whole matrix; entries equal to it are kept)."""
    flat = w.float().abs().flatten()
    k = max(1, int(flat.numel() * (1 - keep)))
    thresh = flat.kthvalue(k).values
    return torch.where(w.float().abs() >= thresh, w.float(), torch.zeros((), device=w.device))


def coefficients(a: torch.Tensor, a_pruned: torch.Tensor, clamp: float) -> torch.Tensor:
    """(r,) CoPA scaling coefficients of one task's A (r, in): ‖A[i]‖₁ / ‖Â[i]‖₁ per rank row, raised
    to the value at sorted position ⌊(1 − clamp) r⌋ (the official ``clamp()``: its upper bound is
    the largest value, so it only raises). Where the official code divides by zero we do not: a row
    that pruning emptied takes the task's largest finite coefficient, an all-zero row 1 (no mass
    removed); both would be inf / NaN there."""
    full, kept = a.float().abs().sum(1), a_pruned.abs().sum(1)
    s = torch.where(full == 0, torch.ones_like(full), full / kept.clamp_min(1e-30))
    emptied = (kept == 0) & (full > 0)
    if emptied.any():
        finite = s[~emptied]
        s = torch.where(emptied, finite.max() if finite.numel() else torch.ones_like(s), s)
    r = s.numel()
    floor = s.sort().values[min(int(r * (1 - clamp)), r - 1)]
    return s.clamp_min(floor)


def copa_layer(per_task: list[tuple[torch.Tensor, torch.Tensor]], keep: float = 0.2, clamp: float = 0.2,
               lam: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_task`` = [(B_t (out, r), A_t (r, in))] of one layer -> (B*, A*) float32."""
    a_hat = [prune(a, keep) for _, a in per_task]
    b_hat = [prune(b, keep) for b, _ in per_task]
    s = torch.stack([coefficients(a, ah, clamp) for (_, a), ah in zip(per_task, a_hat)])  # (T, r)
    a_star = lam * torch.stack(a_hat).sum(0)
    b_star = lam * (s[:, None, :] * torch.stack(b_hat)).sum(0) / s.sum(0)[None, :]
    return b_star, a_star
