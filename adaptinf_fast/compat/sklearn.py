"""Drop-in replacements for scikit-learn's ``KMeans`` and ``MiniBatchKMeans``, as scikit-learn
estimators: ``clone``, ``get_params`` / ``set_params``, pipelines, grid searches and
``check_estimator`` work as with scikit-learn's own (tests run scikit-learn's estimator checks).

Change ``from sklearn.cluster import MiniBatchKMeans`` to
``from adaptinf_fast.compat.sklearn import MiniBatchKMeans``. The constructor takes scikit-learn's
arguments and stores them unchanged; ``fit`` validates them and the data with scikit-learn's own
helpers. Differences, all deliberate:

* The clustering runs on adaptinf_fast's k-means (``ops.kmeans``: Lloyd on the package's kernels,
  greedy k-means++, empty clusters re-seeded), in **float32**: float64 input is validated as float64,
  clustered as float32, and the results are returned in the input's dtype (``cluster_centers_``,
  ``transform``, ``score`` in float64 for float64 input, computed from the centres in float64).
* ``MiniBatchKMeans.fit`` runs full-batch Lloyd iterations (exact, and on a GPU faster than
  mini-batches on a CPU): ``batch_size``, ``max_no_improvement``, ``reassignment_ratio`` and
  ``compute_labels`` are accepted and have no effect there; the result is the full-batch optimum.
  ``partial_fit`` is scikit-learn's streaming update: the first call seeds the centres from its
  batch, every call moves each centre to the (weighted) mean of everything assigned to it so far
  (per-centre learning rate count / (count + batch mass), as scikit-learn's mini-batch step); the
  random reassignment of starved centres (``reassignment_ratio``) is not done.
* Dense input only (``sparse=False`` in the tags); ``copy_x`` and ``algorithm`` are accepted (the
  input is never modified; Lloyd is the only algorithm); ``init`` can be a string or an array, not
  a callable.
* Extra keywords: ``metric`` ("l2" or "cosine", spherical k-means), ``backend`` and ``device``.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ..ops.kmeans import KMeans as _Core
from ..ops.kmeans import kmeans_assign

_DTYPES = [np.float64, np.float32]


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"The '{name}' parameter must be an int >= {minimum}; got {value!r}.")
    return int(value)


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """scikit-learn's ``KMeans`` interface on adaptinf_fast's k-means (see the module docstring).

    Attributes after ``fit``: ``cluster_centers_`` (K, D) in the input's dtype, ``labels_`` int32
    (N,), ``inertia_`` (sum of squared distances to the nearest centre, weighted), ``n_iter_``,
    ``n_features_in_``, ``feature_names_in_`` (for a DataFrame).
    """

    def __init__(self, n_clusters: int = 8, *, init: Any = "k-means++", n_init: Any = "auto", max_iter: int = 300,
                 tol: float = 1e-4, verbose: int = 0, random_state: Any = None, copy_x: bool = True,
                 algorithm: str = "lloyd", metric: str = "l2", backend: str = "auto", device: Any = None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.metric = metric
        self.backend = backend
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- parameters ------------------------------------------------------------------------------
    def _runs(self) -> int:
        """n_init resolved as scikit-learn does ("auto": 1 for k-means++ or an array, else 10)."""
        if self.n_init == "auto":
            return 1 if not isinstance(self.init, str) or self.init == "k-means++" else 10
        return _positive_int(self.n_init, "n_init")

    def _core(self, x: np.ndarray) -> _Core:
        k = _positive_int(self.n_clusters, "n_clusters")
        if x.shape[0] < k:
            raise ValueError(f"n_samples={x.shape[0]} should be >= n_clusters={k}.")
        if callable(self.init):
            raise ValueError("callable init is not supported; pass 'k-means++', 'random' or an array")
        init = self.init
        if isinstance(init, str):
            if init not in ("k-means++", "random"):
                raise ValueError(f"The 'init' parameter must be 'k-means++', 'random' or an array; got {init!r}.")
        else:
            init = np.asarray(init, dtype=np.float32)
            if init.shape != (k, x.shape[1]):
                raise ValueError(f"The shape of the initial centers {init.shape} does not match the number of "
                                 f"clusters {k} and features {x.shape[1]}.")
        if isinstance(self.tol, bool) or not isinstance(self.tol, Real) or self.tol < 0:
            raise ValueError(f"The 'tol' parameter must be a float >= 0; got {self.tol!r}.")
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        runs = self._runs()
        if not isinstance(init, str) and runs != 1:
            warnings.warn(f"Explicit initial center position passed: performing only one init in "
                          f"{type(self).__name__} instead of n_init={runs}.", RuntimeWarning, stacklevel=3)
        return _Core(k, metric=self.metric, n_init=runs if isinstance(init, str) else 1,
                     max_iter=_positive_int(self.max_iter, "max_iter"), tol=float(self.tol), init=init, seed=seed,
                     backend=self.backend, device=self.device, progress=bool(self.verbose))

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "KMeans":
        """Cluster X (N, D); ``sample_weight`` (N,) non-negative weights."""
        import torch

        X = validate_data(self, X, accept_sparse=False, dtype=_DTYPES, order="C", copy=False)
        weights = _weights(sample_weight, X)
        core = self._core(X)
        core.fit(torch.from_numpy(X.astype(np.float32, copy=False)),
                 sample_weight=None if weights is None else torch.from_numpy(weights.astype(np.float32)))
        self.cluster_centers_ = core.cluster_centers_.cpu().numpy().astype(X.dtype)
        self.labels_ = core.labels_.cpu().numpy().astype(np.int32)
        self.inertia_ = float(core.inertia_)
        self.n_iter_ = int(core.n_iter_)
        self._n_features_out = self.cluster_centers_.shape[0]  # get_feature_names_out: one per centre
        return self

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        return self.fit(X, sample_weight=sample_weight).labels_

    def _checked(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, accept_sparse=False, dtype=_DTYPES, order="C", reset=False)

    def _space(self, X: np.ndarray) -> np.ndarray:
        """X where the centres live: unit rows for the cosine metric."""
        if self.metric != "cosine":
            return X
        norm = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.where(norm > 0, norm, 1)

    def predict(self, X: Any) -> np.ndarray:
        """Index (int32) of the nearest centre for every row."""
        import torch

        X = self._checked(X)
        labels, _ = kmeans_assign(torch.from_numpy(X.astype(np.float32, copy=False)),
                                  torch.from_numpy(self.cluster_centers_.astype(np.float32)), metric=self.metric,
                                  backend=self.backend)
        return labels.cpu().numpy().astype(np.int32)

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distances (N, K) to every centre, in X's dtype."""
        X = self._checked(X)
        return euclidean_distances(self._space(X), self.cluster_centers_.astype(X.dtype, copy=False))

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the (weighted) sum of squared distances of X to its nearest centre."""
        X = self._checked(X)
        weights = _weights(sample_weight, X)
        centers = self.cluster_centers_.astype(X.dtype, copy=False)
        total = 0.0
        for r0 in range(0, X.shape[0], 1 << 16):
            d = euclidean_distances(self._space(X[r0 : r0 + (1 << 16)]), centers, squared=True).min(1)
            total += float((d if weights is None else d * weights[r0 : r0 + (1 << 16)]).sum())
        return -total


def _weights(sample_weight: Any, X: np.ndarray) -> np.ndarray | None:
    """scikit-learn's sample-weight validation (1-D, one per sample, finite, >= 0), or None."""
    if sample_weight is None:
        return None
    from sklearn.utils.validation import _check_sample_weight

    return _check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True)


class MiniBatchKMeans(KMeans):
    """scikit-learn's ``MiniBatchKMeans`` interface: full-batch Lloyd on adaptinf_fast's kernels
    (``batch_size`` and the other mini-batch controls are accepted without effect)."""

    def __init__(self, n_clusters: int = 8, *, init: Any = "k-means++", max_iter: int = 100, batch_size: int = 1024,
                 verbose: int = 0, compute_labels: bool = True, random_state: Any = None, tol: float = 0.0,
                 max_no_improvement: int = 10, init_size: Any = None, n_init: Any = "auto",
                 reassignment_ratio: float = 0.01, metric: str = "l2", backend: str = "auto", device: Any = None):
        # every constructor argument stored as given, and nothing else (scikit-learn's contract)
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.verbose = verbose
        self.random_state = random_state
        self.tol = tol
        self.n_init = n_init
        self.metric = metric
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.compute_labels = compute_labels
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.reassignment_ratio = reassignment_ratio

    def _runs(self) -> int:
        """scikit-learn's MiniBatchKMeans: n_init "auto" is 1 for k-means++ or an array, else 3."""
        if self.n_init == "auto":
            return 1 if not isinstance(self.init, str) or self.init == "k-means++" else 3
        return _positive_int(self.n_init, "n_init")

    def _core(self, x: np.ndarray) -> _Core:
        core = super()._core(x)
        if self.init_size is not None:
            core.init_size = _positive_int(self.init_size, "init_size")
        return core

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "MiniBatchKMeans":
        super().fit(X, sample_weight=sample_weight)
        self._counts = np.bincount(self.labels_, weights=_weights(sample_weight, self._checked(X)),
                                   minlength=self.cluster_centers_.shape[0]).astype(self.cluster_centers_.dtype)
        self.n_steps_ = self.n_iter_
        return self

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "MiniBatchKMeans":
        """One streaming update with the batch X (N, D): the first call (on an unfitted estimator)
        seeds the centres from X as ``fit`` would and counts X; later calls assign X to the nearest
        centre and move each centre to the weighted mean of all it was given so far, its learning
        rate batch mass / (count + batch mass). ``labels_`` and ``inertia_`` are X's."""
        import torch

        first = not hasattr(self, "cluster_centers_")
        X = validate_data(self, X, accept_sparse=False, dtype=_DTYPES, order="C", reset=first)
        weights = _weights(sample_weight, X)
        w = np.ones(X.shape[0], X.dtype) if weights is None else weights.astype(X.dtype, copy=False)
        if first:
            self._n_features_out = _positive_int(self.n_clusters, "n_clusters")
            core = self._core(X)
            core.max_iter = 1  # seeding, then one assignment: the batch's own centres start the stream
            core.fit(torch.from_numpy(X.astype(np.float32, copy=False)),
                     sample_weight=None if weights is None else torch.from_numpy(weights.astype(np.float32)))
            self.cluster_centers_ = core.cluster_centers_.cpu().numpy().astype(X.dtype)
            self._counts = np.zeros(self.cluster_centers_.shape[0], X.dtype)
            self.n_steps_ = 0
        centers = self.cluster_centers_.astype(X.dtype, copy=False)
        d = euclidean_distances(self._space(X), centers, squared=True)
        labels = d.argmin(1)
        mass = np.bincount(labels, weights=w, minlength=len(centers)).astype(X.dtype)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, self._space(X) * w[:, None])
        hit = mass > 0
        counts = self._counts + mass
        centers = centers.copy()
        centers[hit] = (centers[hit] * self._counts[hit, None] + sums[hit]) / counts[hit, None]
        if self.metric == "cosine":  # spherical: the centres stay unit rows
            centers = self._space(centers)
        self.cluster_centers_, self._counts = centers, counts
        self.labels_ = labels.astype(np.int32)
        self.inertia_ = float((d[np.arange(len(labels)), labels] * w).sum())
        self.n_steps_ += 1
        self.n_iter_ = self.n_steps_
        return self


__all__ = ["KMeans", "MiniBatchKMeans"]
