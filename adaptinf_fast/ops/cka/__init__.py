"""Linear CKA between the layers of two models, streamed over samples (HiDe-LLaVA's layer split).

For activations X_l (n, d_l) of model A's layers and Y_m (n, e_m) of model B's, linear CKA is
||Xcᵀ Yc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F) on column-centred matrices — the feature-space form of
``reference.linear_cka``. It needs only the moments Xᵀ Y, Xᵀ X, Yᵀ Y and the column sums, which
add up over chunks of samples: one pass, float64 accumulation on the chunks' device (GEMMs), and
the activations are never held whole. ``pairs="all"`` gives every (l, m) pair from one batch of
GEMMs per chunk; ``"diagonal"`` only (l, l) (same-architecture models, layer by layer), with memory
per pair d·e doubles either way.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ... import _validate

PAIRS = ("all", "diagonal")


def _chunk(layers: Sequence, name: str) -> list[torch.Tensor]:
    out = [_validate.float_matrix(t, name).double() for t in layers]
    if len({t.shape[0] for t in out}) > 1:
        raise ValueError(f"{name}: every layer of a chunk must hold the same samples (rows)")
    return out


def linear_cka(chunks: Iterable[tuple[Sequence, Sequence]], *, pairs: str = "all") -> torch.Tensor:
    """Linear CKA for every layer pair of two models.

    Args:
        chunks: iterable of ``(xs, ys)``: ``xs`` a list of L1 tensors (n_c, d_l) — model A's
            activations of one chunk of samples, layer by layer — and ``ys`` L2 tensors (n_c, e_m)
            for the same samples from model B (any float dtype, NumPy or DLPack arrays too).
        pairs: ``"all"`` → (L1, L2); ``"diagonal"`` → (L,) for (l, l), L1 == L2 required.

    Returns:
        float64 CKA values in [0, 1] on the chunks' device; NaN where a layer has no spread.
    """
    if pairs not in PAIRS:
        raise ValueError(f"pairs is {pairs!r}; expected one of {PAIRS}")
    n, sx, sy, xx, yy, xy = 0, None, None, None, None, {}
    for xs, ys in chunks:
        xs, ys = _chunk(xs, "xs"), _chunk(ys, "ys")
        if not xs or not ys:
            raise ValueError("every chunk needs at least one layer on each side")
        if xs[0].shape[0] != ys[0].shape[0]:
            raise ValueError(f"a chunk has {xs[0].shape[0]} samples for model A and {ys[0].shape[0]} for model B")
        if pairs == "diagonal" and len(xs) != len(ys):
            raise ValueError(f"pairs='diagonal' needs as many layers on both sides; got {len(xs)} and {len(ys)}")
        if sx is None:
            sx, sy = [0] * len(xs), [0] * len(ys)
            xx, yy = [0] * len(xs), [0] * len(ys)
        elif (len(sx), len(sy)) != (len(xs), len(ys)):
            raise ValueError("every chunk must carry the same layers")
        n += xs[0].shape[0]
        for i, a in enumerate(xs):
            sx[i], xx[i] = sx[i] + a.sum(0), xx[i] + a.T @ a
        for j, b in enumerate(ys):
            sy[j], yy[j] = sy[j] + b.sum(0), yy[j] + b.T @ b
        for i, a in enumerate(xs):
            for j in ([i] if pairs == "diagonal" else range(len(ys))):
                xy[i, j] = xy.get((i, j), 0) + a.T @ ys[j]
    if n < 2:
        raise ValueError(f"CKA needs at least 2 samples; got {n}")

    def centred(m, s1, s2):  # Σ (a - ā)(b - b̄)ᵀ from the raw moments
        return m - torch.outer(s1, s2) / n

    norm_x = [torch.linalg.matrix_norm(centred(xx[i], sx[i], sx[i])) for i in range(len(sx))]
    norm_y = [torch.linalg.matrix_norm(centred(yy[j], sy[j], sy[j])) for j in range(len(sy))]
    shape = (len(sx),) if pairs == "diagonal" else (len(sx), len(sy))
    out = torch.empty(shape, dtype=torch.float64, device=norm_x[0].device)
    for (i, j), m in xy.items():
        value = torch.linalg.matrix_norm(centred(m, sx[i], sy[j])) ** 2 / (norm_x[i] * norm_y[j])
        out[(i,) if pairs == "diagonal" else (i, j)] = value.clamp(0, 1) if torch.isfinite(value) else value
    return out


__all__ = ["PAIRS", "linear_cka"]
