"""Training-free merging of LoRA adapters (``reference.py`` defines the methods), batched.

``merge_lora`` takes PEFT adapter state dicts (``lora_A`` / ``lora_B`` weights of the same layers)
and returns one merged state dict of the same keys and rank. Layers of one shape are processed as a
batch — their updates, trims, signs and SVDs (average, TIES) or their pruning thresholds, scaling
coefficients and sums (CoPA) as stacked tensors on the adapters' device — so on a GPU a model's
few hundred LoRA layers cost a handful of batched kernels rather than one call each. Equals the
per-layer reference up to float32 rounding (tested).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import reference
from .reference import DEFAULT_LAM, METHODS


def lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """{layer prefix: (lora_B key, lora_A key)} of a PEFT adapter state dict."""
    out = {}
    for key in state:
        if ".lora_A." in key:
            prefix = key.split(".lora_A.")[0]
            b_key = key.replace(".lora_A.", ".lora_B.")
            if b_key not in state:
                raise ValueError(f"adapter has {key} but not {b_key}")
            out[prefix] = (b_key, key)
    if not out:
        raise ValueError("no LoRA weights (lora_A / lora_B) in the adapter")
    return out


def _ties(deltas: torch.Tensor, density: float, lam: float) -> torch.Tensor:
    """``reference.merged_delta(.., "ties")`` for a stack of layers: (L, T, out, in) -> (L, out, in)."""
    n_layers, tasks = deltas.shape[:2]
    flat = deltas.reshape(n_layers, tasks, -1)
    keep = max(1, int(round(density * flat.shape[-1])))
    thresh = flat.abs().topk(keep, dim=-1).values[..., -1:]
    trimmed = torch.where(flat.abs() >= thresh, flat, torch.zeros_like(flat))
    agree = (torch.sign(trimmed) == torch.sign(trimmed.sum(1, keepdim=True))) & (trimmed != 0)
    merged = lam * (trimmed * agree).sum(1) / agree.sum(1).clamp_min(1)
    return merged.reshape(n_layers, *deltas.shape[2:])


def _prune(w: torch.Tensor, keep: float) -> torch.Tensor:
    """``reference.prune`` of every matrix of a stack (..., m, n), each by its own threshold."""
    flat = w.abs().flatten(-2)
    k = max(1, int(flat.shape[-1] * (1 - keep)))
    thresh = flat.kthvalue(k, dim=-1).values[..., None, None]
    return torch.where(w.abs() >= thresh, w, torch.zeros((), device=w.device))


def _copa(b: torch.Tensor, a: torch.Tensor, keep: float, clamp: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.copa_layer`` for a stack of layers: B (L, T, out, r), A (L, T, r, in) -> B*, A*."""
    a_hat, b_hat = _prune(a, keep), _prune(b, keep)
    full, kept = a.abs().sum(-1), a_hat.abs().sum(-1)  # (L, T, r)
    s = torch.where(full == 0, torch.ones_like(full), full / kept.clamp_min(1e-30))
    emptied = (kept == 0) & (full > 0)
    if emptied.any():  # the task's largest finite coefficient (reference.coefficients)
        top = torch.where(emptied, torch.zeros_like(s), s).amax(-1, keepdim=True)
        s = torch.where(emptied, top.clamp_min(1.0), s)
    r = s.shape[-1]
    at = min(int(r * (1 - clamp)), r - 1)
    s = torch.maximum(s, s.sort(dim=-1).values[..., at : at + 1])
    a_star = lam * a_hat.sum(1)
    b_star = lam * (s[:, :, None, :] * b_hat).sum(1) / s.sum(1)[:, None, :]
    return b_star, a_star


def merge_lora(adapters: list[dict[str, torch.Tensor]], scale: float, method: str = "average", *,
               density: float = 0.2, lam: float | None = None, keep: float = 0.2,
               clamp: float = 0.2) -> dict[str, torch.Tensor]:
    """Merge T adapters (same layers and rank) into one of the same keys, rank and dtypes.

    Args:
        adapters: PEFT state dicts (``get_peft_model_state_dict`` / ``load_peft_weights``).
        scale: the LoRA scale alpha / r of every layer.
        method: ``"average"``, ``"ties"`` (``density``: fraction of entries each task keeps) or
            ``"copa"`` (``keep``: fraction of each A and B kept by magnitude; ``clamp``: the share
            of each task's largest scaling coefficients that stay distinct).
        lam: the merged update's scale (TIES) or CoPA's fuse weight; default 1.0, CoPA 2.0.

    Weights that are not LoRA pairs (e.g. a trained projector) are averaged over the tasks for
    CoPA, as its official code does, and taken from adapter 0 otherwise.
    """
    if method not in METHODS:
        raise ValueError(f"merge method {method!r}; expected one of {METHODS}")
    lam = DEFAULT_LAM[method] if lam is None else lam
    if not adapters:
        raise ValueError("no adapters to merge")
    pairs = lora_pairs(adapters[0])
    for i, a in enumerate(adapters[1:], 1):
        if set(lora_pairs(a)) != set(pairs):
            raise ValueError(f"adapter {i} has other LoRA layers than adapter 0")
    merged = {k: v.clone() for k, v in adapters[0].items()}
    if method == "copa":
        lora_keys = {k for pair in pairs.values() for k in pair}
        for k in merged:
            if k not in lora_keys:
                merged[k] = torch.stack([a[k].float() for a in adapters]).mean(0).to(merged[k].dtype)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for prefix, (bk, ak) in pairs.items():
        groups[(tuple(adapters[0][bk].shape), tuple(adapters[0][ak].shape))].append(prefix)
    for (b_shape, _), prefixes in groups.items():
        rank = b_shape[1]
        b = torch.stack([torch.stack([a[pairs[p][0]].float() for a in adapters]) for p in prefixes])  # (L, T, out, r)
        a_ = torch.stack([torch.stack([a[pairs[p][1]].float() for a in adapters]) for p in prefixes])  # (L, T, r, in)
        if method == "copa":  # A and B merged separately, at the tasks' rank
            new_b, new_a = _copa(b, a_, keep, clamp, lam)
            for i, p in enumerate(prefixes):
                bk, ak = pairs[p]
                merged[bk] = new_b[i].to(adapters[0][bk].dtype)
                merged[ak] = new_a[i].to(adapters[0][ak].dtype)
            continue
        deltas = scale * b @ a_  # (L, T, out, in)
        delta = _ties(deltas, density, lam) if method == "ties" else deltas.mean(1)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # batched over the layers
        r = min(rank, s.shape[-1])
        root = (s[:, :r] / scale).sqrt()
        new_b = torch.zeros(len(prefixes), b_shape[0], rank, device=delta.device)
        new_a = torch.zeros(len(prefixes), rank, delta.shape[-1], device=delta.device)
        new_b[:, :, :r] = u[:, :, :r] * root[:, None, :]
        new_a[:, :r] = root[:, :, None] * vh[:, :r]
        for i, p in enumerate(prefixes):
            bk, ak = pairs[p]
            merged[bk] = new_b[i].to(adapters[0][bk].dtype)
            merged[ak] = new_a[i].to(adapters[0][ak].dtype)
    return merged


def delta_of(state: dict[str, torch.Tensor], prefix: str, scale: float) -> torch.Tensor:
    """scale · B A of one layer (float32)."""
    pairs = lora_pairs(state)
    bk, ak = pairs[prefix]
    return scale * state[bk].float() @ state[ak].float()


__all__ = ["METHODS", "DEFAULT_LAM", "merge_lora", "lora_pairs", "delta_of", "reference"]
