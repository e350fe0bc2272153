"""K-means with a scikit-learn-style estimator and a fused-style assignment (DESIGN §4.2)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ... import _validate
from ..library import compiling, kmeans_assign_op
from ...backends import resolve
from .elbow import elbow, format_elbow, plot_elbow
from .init import default_init_size, kmeans_plusplus
from .lloyd import CHUNK_BYTES, Comm, Data, LloydResult, global_rows, tolerance
from .lloyd import lloyd as run_lloyd

METRICS = ("l2", "cosine")
__all__ = ["KMeans", "METRICS", "elbow", "format_elbow", "kmeans_assign", "plot_elbow"]


def _check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric is {metric!r}; expected one of {METRICS}")
    return metric


def _prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    x = x.to(torch.float32)
    return torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x


def kmeans_assign(x: Any, centroids: Any, *, metric: str = "l2", nonfinite: str = "raise", backend: str = "auto"):
    """Nearest centroid of every row.

    Args:
        x: (N, D) float32/float16/bfloat16 tensor or NumPy array.
        centroids: (K, D) floating, same device as x.
        metric: ``"l2"`` (squared Euclidean) or ``"cosine"`` (rows and centroids are L2-normalised).
        nonfinite: ``"raise"`` on NaN/Inf rows of x, or ``"zero"`` them with a warning.
        backend: ``"auto" | "torch" | "triton" | "cuda"``.

    Returns:
        (labels int64 (N,), value float32 (N,)): value is the squared L2 distance for ``"l2"``, the
        cosine similarity for ``"cosine"``. Ties go to the lowest centroid index.
    """
    if compiling() and isinstance(x, torch.Tensor) and isinstance(centroids, torch.Tensor):
        return kmeans_assign_op(x, centroids, metric, nonfinite, backend)
    metric = _check_metric(metric)
    x = _validate.check_finite(_validate.float_matrix(x, "x"), "x", nonfinite)
    c = _validate.float_matrix(centroids, "centroids", shape_hint="(K, D)")
    if c.shape[0] < 1:
        raise ValueError("centroids is empty; expected K >= 1 rows")
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"centroids have D={c.shape[1]} but x has D={x.shape[1]}")
    if c.device != x.device:
        raise ValueError(f"centroids are on {c.device} but x is on {x.device}")
    _validate.check_finite(c, "centroids", "raise")
    _, impl = resolve("kmeans_assign", backend, x.device, work=x.shape[0] * c.shape[0] * x.shape[1])
    return impl.assign(_prepare(x, metric), _prepare(c, metric), metric)


def _chunk_assign(impl, data: Data, metric: str):
    """Lloyd's assign for one backend: norms (and a kernel's screened copy of the rows) are kept
    per chunk across iterations."""
    screened = getattr(impl, "screened_rows", None)

    def assign(start: int, xc: torch.Tensor, centers: torch.Tensor, values: bool):
        kw = {"rows": data.kept("screen", start, lambda: screened(xc, metric))} if screened else {}
        return impl.assign(xc, centers, metric, x_sqnorm=data.sqnorms(start, xc), values=values, **kw)

    return assign


def _check_finite_chunked(x: torch.Tensor, name: str, rows: int = 1 << 18) -> None:
    """Raise on NaN/Inf rows without converting the whole (possibly memory-mapped) array at once."""
    bad, first = 0, []
    for r0 in range(0, x.shape[0], rows):
        rb = _validate.nonfinite_rows(x[r0 : r0 + rows])
        if rb.any():
            bad += int(rb.sum())
            first += (rb.nonzero().flatten() + r0)[: 5 - len(first)].tolist()
    if bad:
        raise ValueError(f"{name} has {bad} row(s) with NaN or Inf (first: {first}); clean them or pass nonfinite='zero'")


def _sample_weights(w: Any, n: int) -> torch.Tensor | None:
    """(N,) float32 weights, checked: finite, >= 0, not all 0; None for None."""
    if w is None:
        return None
    t = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w).to(torch.float32).flatten()
    if t.numel() != n:
        raise ValueError(f"sample_weight has {t.numel()} values for {n} samples")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if not (t > 0).any():
        raise ValueError("sample_weight is 0 everywhere: no sample to cluster")
    return t


class KMeans:
    """Lloyd's k-means with greedy k-means++ seeding; scikit-learn's estimator interface.

    Args:
        n_clusters: K >= 1 (and <= the number of samples at fit time).
        metric: ``"l2"`` or ``"cosine"`` (spherical k-means: points and centroids L2-normalised,
            assignment by largest inner product).
        n_init: independent runs; the one with the lowest inertia is kept.
        max_iter: Lloyd iterations per run.
        tol: stop when the squared centre shift is <= tol × mean per-feature variance
            (scikit-learn's relative tolerance), or when labels stop changing.
        init: ``"k-means++"``, ``"random"`` or a (K, D) array of initial centres.
        init_size: points k-means++ runs on; default ``max(10_000, 20·K)`` (all when N is smaller).
        seed: seed of every random choice; the same seed gives the same result on the same backend.
        nonfinite: ``"raise"`` on NaN/Inf rows, or ``"zero"`` them with a warning.
        backend: assignment backend, ``"auto" | "torch" | "triton" | "cuda"``.
        device: where to compute (default: where the data is); host data is streamed to it in chunks.
        progress: show a progress bar over iterations.
        chunk_rows: rows per streamed chunk (default: 256 MiB of float32 rows).
        distributed: under an initialised ``torch.distributed`` group, fit the union of the ranks'
            shards (default); False: this process's data alone, whatever the group.

    Attributes (after ``fit``): ``cluster_centers_`` float32 (K, D), ``labels_`` int64 (N,),
    ``inertia_`` (sum of squared distances to the assigned centre; for cosine between unit
    vectors), ``n_iter_``. Arrays are NumPy when ``fit`` got NumPy, torch tensors otherwise.

    Example:
        >>> km = KMeans(10, metric="cosine", seed=0).fit(features)
        >>> km.labels_[:5], km.inertia_
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        metric: str = "l2",
        n_init: int = 1,
        max_iter: int = 100,
        tol: float = 1e-4,
        init: Any = "k-means++",
        init_size: int | None = None,
        seed: int = 0,
        nonfinite: str = "raise",
        backend: str = "auto",
        device: str | torch.device | None = None,
        progress: bool = False,
        chunk_rows: int | None = None,
        distributed: bool = True,
    ):
        self.n_clusters = _validate.positive_int(n_clusters, "n_clusters")
        self.chunk_rows = None if chunk_rows is None else _validate.positive_int(chunk_rows, "chunk_rows")
        self.distributed = bool(distributed)
        self.metric = _check_metric(metric)
        self.n_init = _validate.positive_int(n_init, "n_init")
        self.max_iter = _validate.positive_int(max_iter, "max_iter")
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"tol is {tol!r}; expected a number >= 0")
        self.tol = float(tol)
        if isinstance(init, str) and init not in ("k-means++", "random"):
            raise ValueError(f"init is {init!r}; expected 'k-means++', 'random' or a (K, D) array")
        self.init = init
        self.init_size = None if init_size is None else _validate.positive_int(init_size, "init_size")
        self.seed = _validate.positive_int(seed, "seed", minimum=0)
        self.nonfinite = nonfinite
        self.backend = backend
        self.device = device
        self.progress = progress

    # -- fitting -------------------------------------------------------------------------------
    def _initial_centers(self, data: Data, comm: Comm, generator: torch.Generator) -> torch.Tensor:
        """The same centres on every rank: seeding runs on a global subsample gathered in one order
        (with sample weights: random centres drawn ∝ weight, k-means++ on the sample's weights)."""
        k = self.n_clusters
        sizes = comm.sizes(data.n)
        n, offset = sum(sizes), sum(sizes[: comm.rank])
        if isinstance(self.init, str):
            weights = None
            if data.w is not None:  # every rank's weights, in global order
                weights = torch.zeros(n, dtype=torch.float64, device=data.device)
                weights[offset : offset + data.n] = data.w.double()
                comm.sum_(weights)
            if self.init == "random":
                idx = (torch.randperm(n, generator=generator)[:k] if weights is None else
                       torch.multinomial(weights.cpu(), k, replacement=False, generator=generator))
                return global_rows(data, comm, idx, offset)
            size = min(n, self.init_size or default_init_size(n, k))
            idx = torch.randperm(n, generator=generator)[:size] if size < n else torch.arange(n)
            sample = global_rows(data, comm, idx, offset)
            return kmeans_plusplus(sample, k, generator, sample.shape[0],
                                   None if weights is None else weights[idx.to(weights.device)])
        c = _validate.float_matrix(self.init, "init", shape_hint="(K, D)")
        if tuple(c.shape) != (k, data.d):
            raise ValueError(f"init has shape {tuple(c.shape)}; expected ({k}, {data.d})")
        _validate.check_finite(c, "init", "raise")
        return _prepare(c.to(data.device), self.metric)

    def fit(self, x: Any, y: Any = None, sample_weight: Any = None) -> "KMeans":
        """Fit on (N, D) float data: a torch tensor, a NumPy array or memmap, or a ``FeatureView``
        (16-bit rows in files, ``adaptinf_fast.featureview``).

        Data is processed in row chunks on ``device`` (default: the data's device), so a memmap, a
        view or a host tensor larger than device memory is streamed (extra memory: O(chunk + N)). Under an initialised
        ``torch.distributed`` process group each rank passes its own shard; all ranks end with the
        centres a single process would get on the union, and ``labels_`` for their shard.
        ``sample_weight``: (N,) non-negative weights (default all 1): centroids are weighted means,
        the inertia a weighted sum, seeding draws ∝ weight.
        """
        from ...featureview import FeatureView

        as_numpy = isinstance(x, np.ndarray)
        if as_numpy and not isinstance(x, np.memmap):
            x = np.ascontiguousarray(x)
        if isinstance(x, FeatureView):  # rows on disk, read chunk by chunk
            if self.nonfinite != "raise":
                raise ValueError("nonfinite='zero' needs the data in memory; a FeatureView is read-only")
            t = x
        else:
            t = _validate.float_matrix(x, "x")
        comm = Comm(self.distributed)
        if self.nonfinite == "raise":
            _check_finite_chunked(t, "x", self.chunk_rows or max(1, CHUNK_BYTES // (4 * max(t.shape[1], 1))))
        else:
            t = _validate.check_finite(t, "x", self.nonfinite)
        n_total = sum(comm.sizes(t.shape[0]))
        if self.n_clusters > n_total:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than the number of samples ({n_total})")
        if not isinstance(self.init, str) and self.n_init != 1:
            warnings.warn("explicit init array: n_init is ignored (one run)", RuntimeWarning, stacklevel=2)
        device = torch.device(self.device) if self.device is not None else t.device
        _, impl = resolve("kmeans_assign", self.backend, device)
        data = Data(t, self.metric, device, chunk_rows=self.chunk_rows, weights=_sample_weights(sample_weight, t.shape[0]))
        tol = tolerance(data, comm, self.tol)
        generator = torch.Generator().manual_seed(self.seed)
        best: LloydResult | None = None
        runs = self.n_init if isinstance(self.init, str) else 1
        for _ in range(runs):
            centers = self._initial_centers(data, comm, generator)
            result = run_lloyd(data, centers, _chunk_assign(impl, data, self.metric), metric=self.metric,
                               max_iter=self.max_iter, tol=tol, comm=comm, progress=self.progress)
            if best is None or result.inertia < best.inertia:
                best = result
        assert best is not None
        found = torch.zeros(self.n_clusters, dtype=torch.int64, device=device)
        found[best.labels] = 1
        distinct = int((comm.sum_(found) > 0).sum())
        if distinct < self.n_clusters:
            warnings.warn(
                f"found {distinct} distinct clusters, fewer than n_clusters={self.n_clusters} "
                "(the data has too few distinct points)", RuntimeWarning, stacklevel=2,
            )
        conv = (lambda t: t.cpu().numpy()) if as_numpy else (lambda t: t)
        self.cluster_centers_ = conv(best.centers)
        self.labels_ = conv(best.labels)
        self.inertia_ = best.inertia
        self.n_iter_ = best.n_iter
        self._centers_t = best.centers
        return self

    def predict(self, x: Any) -> Any:
        """Index of the nearest fitted centre for every row (NumPy in, NumPy out)."""
        if not hasattr(self, "_centers_t"):
            raise RuntimeError("this KMeans is not fitted yet; call fit first")
        as_numpy = isinstance(x, np.ndarray)
        x = _validate.float_matrix(x, "x")
        labels, _ = kmeans_assign(x, self._centers_t.to(x.device), metric=self.metric,
                                  nonfinite=self.nonfinite, backend=self.backend)
        return labels.cpu().numpy() if as_numpy else labels

    def fit_predict(self, x: Any, y: Any = None, sample_weight: Any = None) -> Any:
        return self.fit(x, sample_weight=sample_weight).labels_
