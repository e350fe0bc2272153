"""Drop-in for the Adapt-∞ release's selection script (``data_selection/adapt-inf.py``).

The functions its ``main`` calls, with its names, arguments and return values, backed by our
vectorised code and max-similarity kernel (``selection/release.py``) — for scripts that import
them. Same inputs give the same outputs, including the same Python ``random`` draws on the global
``random`` module (seed it with ``random.seed`` as before). Where the release raises (a negative
CCS quota, a zero division in the budget split, an empty cluster), these raise
``ReleaseCrash`` (a ``ValueError``) saying so and which of our rules avoids it. The release's
prints are left out. NumPy >= 2 is required for bit-identical bin edges (see ``selection/release.py``).
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np

from ..selection import release
from ..selection.release import ReleaseCrash

__all__ = ["ReleaseCrash", "assign_budget_to_cluster", "get_ccs_samples", "get_dist_entropy", "get_mwp_score",
           "semdedup", "set_outlier_threshold"]


def get_dist_entropy(x: Any, nbins: int = 50, verbose: bool = False) -> float:
    """Histogram entropy (bits) of the z-scored ``x`` by the release's bins (NaN at zero spread)."""
    return release.entropy(x, nbins)


def get_mwp_score(scores: Mapping[str, np.ndarray], selected_idxs: Any) -> np.ndarray:
    """The values at ``selected_idxs`` of the score with the largest ``get_dist_entropy`` there."""
    return scores[release.choose_selector(scores, selected_idxs)][selected_idxs]


def assign_budget_to_cluster(cluster_sizes, total_budget: int, n_clusters: int, score_weighted: bool = False,
                             el2n_scores: Any = None, labels: Any = None) -> list:
    """Budget per cluster (list, cluster order): rounded-up equal shares, or el2n-std weighted."""
    if score_weighted:
        return release.weighted_budgets(cluster_sizes, total_budget, n_clusters, el2n_scores, labels)
    return release.budgets(cluster_sizes, total_budget, n_clusters)


def set_outlier_threshold(scores: Any):
    """(low, high): the scores at the 5% and 95% positions of their sorted order."""
    return release.thresholds(np.asarray(scores))


def get_ccs_samples(scores: Any, bins: int, budget: int) -> np.ndarray:
    """CCS positions into ``scores`` (bins from the top), drawn with the global ``random``."""
    return release.ccs(scores, bins, budget, random)


def semdedup(embeddings: Any, cluster_labels: Any, num_clusters: int, keep_samples: int = 0.9, sort: bool = False,
             cluster_centers: Any = None, visualize: bool = False):
    """(kept indices, M per sample cluster by cluster) keeping ``keep_samples`` (an int) samples.

    ``sort``, ``cluster_centers`` and ``visualize`` are accepted and unused, as in the release
    (its centroid sort is commented out)."""
    if not isinstance(keep_samples, int) or isinstance(keep_samples, bool):
        raise TypeError(f"keep_samples must be an int (the release asserts it); got {keep_samples!r}")
    return release.prune(embeddings, cluster_labels, num_clusters, keep_samples)
