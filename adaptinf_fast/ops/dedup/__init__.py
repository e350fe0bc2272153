"""Within-cluster redundancy: max similarity to an earlier sample, SemDeDup and Adapt-∞ pruning (§4.3).

Features may be a tensor in memory or a ``FeatureView`` over 16-bit files: a view is read one group
of clusters at a time (``streamed.py``), so pruning a pool of millions needs memory for O(N) scalars
and one group of rows, never the whole pool in float32."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ... import _validate
from ..library import compiling, max_similarity_op
from ...backends import resolve
from ..budget import split_budget

ORDERS = ("hard", "easy", "random", "index")
_CHUNK_BYTES = 64 << 20  # float32 bytes of one chunk where a pass over x is chunked


def _labels(labels: Any, n: int) -> torch.Tensor:
    labels = _validate.int_vector(labels, "labels", n)
    if n and labels.min() < 0:
        raise ValueError("labels must be >= 0 (cluster ids; need not be contiguous)")
    return labels


def _normalized(x: torch.Tensor) -> torch.Tensor:
    # fp32 arithmetic whatever the input dtype, so fp16 rows that are not exactly unit-norm are fine.
    return torch.nn.functional.normalize(x.to(torch.float32), dim=1)


def cluster_max_similarity(x: Any, labels: Any, *, order: Any = None, exact: bool = True, nonfinite: str = "raise",
                           backend: str = "auto", progress: bool = False, device: Any = None,
                           max_rows: int | None = None, distributed: bool = False):
    """For every sample j, the largest cosine similarity M_j to a sample of its cluster that comes
    earlier in ``order``, and that sample's index.

    Args:
        x: (N, D) float32/float16/bfloat16; rows are L2-normalised in float32 arithmetic.
        labels: (N,) integer cluster ids >= 0 (any values, need not be contiguous).
        order: a permutation of 0..N-1 (default: index order).
        exact: results equal float32 arithmetic on the normalised rows. The Triton kernel screens
            in fp16 on tensor cores and recomputes in float32 the rows whose best and second-best
            candidates are within the screening bound, then every M_j from its winner (see
            ``ops/screen.py``). ``exact=False`` returns the screened values (about 1e-3 off).
        nonfinite: ``"raise"`` on NaN/Inf rows, or ``"zero"`` them with a warning.
        backend: ``"auto" | "torch" | "triton" | "cuda"``.
        progress: show a progress bar over clusters.
        device: where to compute (default: x's device; the CPU for a view).
        max_rows: cluster by cluster (``streamed.py``): groups of clusters of at most this many rows
            are gathered and computed in turn, a larger cluster out of core; the default for a
            ``FeatureView`` x (512 MiB of float32 rows), off for a tensor unless given.
        distributed: under an initialised ``torch.distributed`` group, split the clusters over the
            ranks (each passes the same x and labels) and give every rank all results.

    Returns:
        (M float32 (N,), index int64 (N,)): M_j is the true maximum (it may be negative); where j has
        no predecessor in its cluster, M_j = -inf and index = -1. Ties go to the earliest sample.
        For a view, max_rows or distributed: on the CPU.
    """
    from ...featureview import FeatureView

    if isinstance(x, FeatureView) or max_rows is not None or distributed:
        return _streamed(x, labels, order, exact=exact, nonfinite=nonfinite, backend=backend, progress=progress,
                         device=device, max_rows=max_rows, distributed=distributed)
    if compiling() and all(isinstance(t, torch.Tensor) for t in (x, labels)) and (order is None or isinstance(order, torch.Tensor)):
        return max_similarity_op(x, labels, order, exact, nonfinite, backend)
    x, labels, order = _inputs(x, labels, order, nonfinite)
    if device is not None:
        x = x.to(device)
        labels, order = labels.to(x.device), order.to(x.device)
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.float32, device=x.device), torch.empty(0, dtype=torch.int64, device=x.device)
    name, impl = resolve("cluster_max_similarity", backend, x.device)
    kw = {"exact": exact} if name in ("triton", "cuda") else {}
    return impl.max_similarity(_normalized(x), labels, order, progress=progress, **kw)


def _streamed(x: Any, labels: Any, order: Any, *, exact: bool, nonfinite: str, backend: str, progress: bool,
              device: Any, max_rows: int | None, distributed: bool):
    from ...featureview import FeatureView
    from . import streamed

    if isinstance(x, FeatureView):
        if nonfinite != "raise":
            raise ValueError("nonfinite='zero' needs the features in memory; a FeatureView is read-only")
        _check_finite_rows(x, min(max_rows or (1 << 30), max(1, _CHUNK_BYTES // (4 * max(x.shape[1], 1)))))
    else:
        x = _validate.check_finite(_validate.float_matrix(x, "x"), "x", nonfinite)
    n = x.shape[0]
    labels = _labels(labels, n).cpu()
    order = (torch.arange(n) if order is None else _validate.permutation(order, n)).cpu()
    device = torch.device(device) if device is not None else x.device
    name, impl = resolve("cluster_max_similarity", backend, device)
    kw = {"exact": exact} if name in ("triton", "cuda") else {}
    return streamed.max_similarity(x, labels, order, impl=impl, exact_kw=kw, device=device,
                                   max_rows=max_rows, distributed=distributed,
                                   progress=progress)


def _check_finite_rows(x, rows: int) -> None:
    """Raise on NaN/Inf rows of a view, chunk by chunk (one read of the features)."""
    for r0 in range(0, x.shape[0], rows):
        bad = _validate.nonfinite_rows(x[r0 : r0 + rows])
        if bad.any():
            first = (bad.nonzero().flatten() + r0)[:5].tolist()
            raise ValueError(f"x has {int(bad.sum())}+ row(s) with NaN or Inf (first: {first})")


def _inputs(x: Any, labels: Any, order: Any, nonfinite: str):
    """Validated (x, labels, order) on x's device; order defaults to index order."""
    x = _validate.check_finite(_validate.float_matrix(x, "x"), "x", nonfinite)
    n = x.shape[0]
    labels = _labels(labels, n).to(x.device)
    order = (torch.arange(n) if order is None else _validate.permutation(order, n)).to(x.device)
    return x, labels, order


def semdedup_order(x: Any, labels: Any, mode: str = "hard", *, centroids: Any = None, seed: int = 0,
                   chunk_rows: int | None = None) -> torch.Tensor:
    """SemDeDup's within-cluster order as a permutation of 0..N-1.

    ``"hard"``: descending cosine distance to the cluster centroid (the sample farthest from the
    centroid comes first and so survives a near-duplicate group); ``"easy"``: ascending;
    ``"random"``: a seeded random order; ``"index"``: index order. Ties keep index order.
    ``centroids`` (optional, (L, D) with L > max label) is indexed by label value; by default the
    centroid is the mean of the cluster's normalised rows. ``x`` may be a ``FeatureView``; it is
    read in chunks of ``chunk_rows`` rows (default: 64 MiB of float32 rows).
    """
    if mode not in ORDERS:
        raise ValueError(f"order is {mode!r}; expected one of {ORDERS} or a permutation")
    from ...featureview import FeatureView

    if not isinstance(x, FeatureView):
        x = _validate.float_matrix(x, "x")
    n = x.shape[0]
    labels = _labels(labels, n).to(x.device)
    if mode == "index":
        return torch.arange(n, device=x.device)
    if mode == "random":
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
    # chunk by chunk (a view is read twice, a tensor is never copied whole): centroid sums in
    # float64, then each row's cosine to its cluster's centroid
    uniq, dense = torch.unique(labels, return_inverse=True)
    step = chunk_rows or max(1, _CHUNK_BYTES // (4 * max(x.shape[1], 1)))
    if centroids is None:
        sums = torch.zeros(uniq.numel(), x.shape[1], dtype=torch.float64, device=x.device)
        for r0 in range(0, n, step):
            sums.index_add_(0, dense[r0 : r0 + step], _normalized(x[r0 : r0 + step]).double())
        centre = _normalized(sums)
    else:
        c = _validate.float_matrix(centroids, "centroids", shape_hint="(L, D) indexed by label value")
        if c.shape[1] != x.shape[1]:
            raise ValueError(f"centroids have D={c.shape[1]} but x has D={x.shape[1]}")
        if n and c.shape[0] <= int(labels.max()):
            raise ValueError(f"centroids has {c.shape[0]} rows but labels go up to {int(labels.max())}")
        centre = _normalized(c.to(x.device))[uniq]
    cos = torch.empty(n, dtype=torch.float32, device=x.device)
    for r0 in range(0, n, step):
        cos[r0 : r0 + step] = (_normalized(x[r0 : r0 + step]) * centre[dense[r0 : r0 + step]]).sum(1)
    key = cos if mode == "hard" else -cos  # hard: largest distance (smallest cos) first
    return torch.argsort(key, stable=True)


def _check_eps(eps: Any) -> list[float]:
    values = list(eps) if isinstance(eps, (list, tuple)) else [eps]
    if not values:
        raise ValueError("eps is an empty list")
    for e in values:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 < e < 2.0:
            raise ValueError(f"eps={e!r} is outside (0, 2); SemDeDup drops j when M_j > 1 - eps")
    return [float(e) for e in values]


def semdedup(
    x: Any,
    labels: Any,
    *,
    eps: float | Sequence[float],
    order: Any = "hard",
    centroids: Any = None,
    seed: int = 0,
    exact: bool = True,
    nonfinite: str = "raise",
    backend: str = "auto",
    distributed: bool = False,
    device: Any = None,
    max_rows: int | None = None,
) -> torch.Tensor:
    """SemDeDup threshold pruning: drop sample j when M_j > 1 - eps (one kernel pass for all eps).

    Args:
        x: (N, D) float32/float16/bfloat16 embeddings.
        labels: (N,) cluster ids >= 0.
        eps: one value or a list, each in (0, 2).
        order: ``"hard" | "easy" | "random" | "index"`` (see ``semdedup_order``) or a permutation.
        centroids: optional (L, D) centroids indexed by label value, for "hard"/"easy".
        seed: seed of ``order="random"``.
        exact: decisions equal those of float32 arithmetic on the same input values (see
            ``cluster_max_similarity``); without it the Triton kernel's fp16-screened values decide.
        nonfinite, backend, distributed, device, max_rows: as in ``cluster_max_similarity`` (x may be a
            FeatureView; ``max_rows`` also bounds the chunks of the order pass).

    Returns:
        bool keep mask: (N,) for one eps, (len(eps), N) for a list.
    """
    from ...featureview import FeatureView

    eps_list = _check_eps(eps)
    if not isinstance(x, FeatureView):
        x = _validate.float_matrix(x, "x")
    if isinstance(order, str):
        order = semdedup_order(x, labels, order, centroids=centroids, seed=seed, chunk_rows=max_rows)
    m, _ = cluster_max_similarity(x, labels, order=order, exact=exact, nonfinite=nonfinite, backend=backend,
                                  distributed=distributed, device=device, max_rows=max_rows)
    keep = torch.stack([~(m > 1.0 - e) for e in eps_list])
    return keep if isinstance(eps, (list, tuple)) else keep[0]


def prune_to_budget(max_sim: Any, labels: Any, budget: Any, *, order: Any = None) -> torch.Tensor:
    """Adapt-∞ permanent pruning: in each cluster keep the ``budget_c`` samples with the lowest M_j.

    Args:
        max_sim: (N,) M_j from ``cluster_max_similarity`` (-inf allowed, NaN not).
        labels: (N,) cluster ids >= 0.
        budget: an int total (split over clusters by DESIGN §4.6, see ``split_budget``) or a
            per-cluster sequence indexed by label value (len > max label; entries >= 0).
        order: the permutation M was computed with; ties in M keep the sample earlier in it.

    Returns:
        bool keep mask (N,).
    """
    m = _validate.as_tensor(max_sim, "max_sim")
    if m.dim() != 1 or not m.dtype.is_floating_point:
        raise ValueError(f"max_sim must be a 1-D float vector; got shape {tuple(m.shape)}, dtype {m.dtype}")
    n = m.numel()
    if torch.isnan(m).any():
        raise ValueError(f"max_sim has {int(torch.isnan(m).sum())} NaN entries")
    labels = _labels(labels, n).to(m.device)
    order = (torch.arange(n) if order is None else _validate.permutation(order, n)).to(m.device)
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=m.device)
    uniq, dense = torch.unique(labels, return_inverse=True)
    sizes = torch.bincount(dense, minlength=uniq.numel())
    if isinstance(budget, (int,)) and not isinstance(budget, bool):
        shares = split_budget(sizes.cpu(), budget).to(m.device)
    else:
        per = _validate.int_vector(budget, "budget")
        if per.numel() <= int(uniq.max()):
            raise ValueError(f"budget has {per.numel()} entries but labels go up to {int(uniq.max())}")
        if per.min() < 0:
            raise ValueError("budget entries must be >= 0")
        shares = per.to(m.device)[uniq]
    p = order[torch.argsort(m[order], stable=True)]  # by M, ties by position in order
    p = p[torch.argsort(dense[p], stable=True)]  # then grouped by cluster
    starts = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(n, device=m.device) - starts[dense[p]]
    keep = torch.zeros(n, dtype=torch.bool, device=m.device)
    keep[p] = pos < shares[dense[p]]
    return keep
