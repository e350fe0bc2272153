"""K-means with a scikit-learn-style estimator and a fused-style assignment (DESIGN §4.2)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ... import _validate
from ...backends import resolve
from .elbow import elbow, format_elbow, plot_elbow
from .init import default_init_size, kmeans_plusplus, random_init
from .lloyd import LloydResult, lloyd

METRICS = ("l2", "cosine")


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
    _, impl = resolve("kmeans_assign", backend, x.device)
    return impl.assign(_prepare(x, metric), _prepare(c, metric), metric)


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
        progress: show a progress bar over iterations.

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
        progress: bool = False,
    ):
        self.n_clusters = _validate.positive_int(n_clusters, "n_clusters")
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
        self.progress = progress

    # -- fitting -------------------------------------------------------------------------------
    def _initial_centers(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = self.n_clusters
        if isinstance(self.init, str):
            if self.init == "random":
                return random_init(x, k, generator)
            size = self.init_size or default_init_size(x.shape[0], k)
            return kmeans_plusplus(x, k, generator, min(size, x.shape[0]))
        c = _validate.float_matrix(self.init, "init", shape_hint="(K, D)")
        if tuple(c.shape) != (k, x.shape[1]):
            raise ValueError(f"init has shape {tuple(c.shape)}; expected ({k}, {x.shape[1]})")
        _validate.check_finite(c, "init", "raise")
        return _prepare(c.to(x.device), self.metric)

    def fit(self, x: Any, y: Any = None) -> "KMeans":
        """Fit on (N, D) float data (NumPy or torch, any device the backend supports)."""
        as_numpy = isinstance(x, np.ndarray)
        x = _validate.check_finite(_validate.float_matrix(x, "x"), "x", self.nonfinite)
        n = x.shape[0]
        if self.n_clusters > n:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than the number of samples ({n})")
        if not isinstance(self.init, str) and self.n_init != 1:
            warnings.warn("explicit init array: n_init is ignored (one run)", RuntimeWarning, stacklevel=2)
        _, impl = resolve("kmeans_assign", self.backend, x.device)
        xf = _prepare(x, self.metric)
        tol = self.tol * float(xf.var(dim=0, unbiased=False).mean()) if n > 1 else 0.0
        generator = torch.Generator().manual_seed(self.seed)
        best: LloydResult | None = None
        runs = self.n_init if isinstance(self.init, str) else 1
        for _ in range(runs):
            centers = self._initial_centers(xf, generator)
            result = lloyd(
                xf, centers, lambda a, c: impl.assign(a, c, self.metric), metric=self.metric,
                max_iter=self.max_iter, tol=tol, progress=self.progress,
            )
            if best is None or result.inertia < best.inertia:
                best = result
        assert best is not None
        distinct = int(torch.unique(best.labels).numel())
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

    def fit_predict(self, x: Any, y: Any = None) -> Any:
        return self.fit(x).labels_
