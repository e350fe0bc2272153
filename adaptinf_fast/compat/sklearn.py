"""Drop-in replacements for scikit-learn's ``KMeans`` and ``MiniBatchKMeans`` as the Adapt-∞
release uses them (pseudo-skill clustering of gradient features).

Change ``from sklearn.cluster import MiniBatchKMeans`` to
``from adaptinf_fast.compat.sklearn import MiniBatchKMeans``. The constructor takes scikit-learn's
arguments (``n_clusters, init, n_init, max_iter, tol, random_state, batch_size, ...``); NumPy or
torch input; ``fit / predict / fit_predict``, ``labels_, cluster_centers_, inertia_, n_iter_``.
``MiniBatchKMeans`` runs full-batch Lloyd iterations on adaptinf_fast's kernels (exact, and on a
GPU faster than mini-batches on a CPU); ``batch_size`` is accepted and ignored, and the result is
the full-batch optimum, not scikit-learn's mini-batch approximation. Unsupported options
(``sample_weight``, callable ``init``) raise instead of being ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.kmeans import KMeans as _KMeans


class KMeans(_KMeans):
    def __init__(self, n_clusters: int = 8, *, init: Any = "k-means++", n_init: Any = "auto", max_iter: int = 300,
                 tol: float = 1e-4, verbose: int = 0, random_state: Any = None, copy_x: bool = True,
                 algorithm: str = "lloyd", metric: str = "l2", backend: str = "auto", device: Any = None):
        if callable(init):
            raise ValueError("callable init is not supported; pass 'k-means++', 'random' or an array")
        if n_init == "auto":  # scikit-learn: 1 run for k-means++, 10 for random
            n_init = 1 if isinstance(init, str) and init == "k-means++" else 10
        if random_state is None:
            seed = 0
        elif isinstance(random_state, np.random.RandomState):
            seed = int(random_state.randint(0, 2**31 - 1))
        else:
            seed = int(random_state)
        super().__init__(n_clusters, metric=metric, n_init=n_init if isinstance(init, str) else 1,
                         max_iter=max_iter, tol=tol, init=init, seed=seed, backend=backend, device=device,
                         progress=bool(verbose))

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "KMeans":
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported")
        return super().fit(X)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X: Any) -> Any:
        """Distances to every centre (N, K), as scikit-learn."""
        import torch

        as_numpy = isinstance(X, np.ndarray)
        x = torch.as_tensor(np.asarray(X) if as_numpy else X).float()
        d = torch.cdist(x, self._centers_t.to(x.device))
        return d.cpu().numpy() if as_numpy else d


class MiniBatchKMeans(KMeans):
    def __init__(self, n_clusters: int = 8, *, init: Any = "k-means++", max_iter: int = 100, batch_size: int = 1024,
                 verbose: int = 0, compute_labels: bool = True, random_state: Any = None, tol: float = 0.0,
                 max_no_improvement: int = 10, init_size: Any = None, n_init: Any = "auto",
                 reassignment_ratio: float = 0.01, metric: str = "l2", backend: str = "auto", device: Any = None):
        if n_init == "auto":  # scikit-learn's MiniBatchKMeans: 1 run for k-means++, 3 for random
            n_init = 1 if isinstance(init, str) and init == "k-means++" else 3
        self.batch_size = batch_size
        super().__init__(n_clusters, init=init, n_init=n_init, max_iter=max_iter, tol=tol, verbose=verbose,
                         random_state=random_state, metric=metric, backend=backend, device=device)
        if init_size is not None:
            self.init_size = int(init_size)


__all__ = ["KMeans", "MiniBatchKMeans"]
