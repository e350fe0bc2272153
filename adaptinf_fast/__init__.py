"""adaptinf-fast: fast, exact kernels for lifelong instruction tuning with dynamic data selection.

Public ops (DESIGN §4): ``project``, ``projection_matrix``, ``KMeans``, ``kmeans_assign``,
``cluster_max_similarity``, ``semdedup``, ``prune_to_budget``. Every op takes ``backend=`` and runs
on plain torch (CPU or GPU) without any kernel. Importing the package queries no GPU.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .backends import BackendUnavailableError, available_backends
from .features import FeatureSet, GradientFeaturizer
from .ops.dedup import cluster_max_similarity, prune_to_budget, semdedup, semdedup_order
from .ops.kmeans import KMeans, elbow, kmeans_assign
from .ops.projection import project, projection_matrix
from .ops.projection.linear_grads import project_linear_grads
from .selection.budget import split_budget

try:
    __version__ = _version("adaptinf-fast")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "BackendUnavailableError",
    "FeatureSet",
    "GradientFeaturizer",
    "KMeans",
    "available_backends",
    "cluster_max_similarity",
    "elbow",
    "kmeans_assign",
    "project",
    "project_linear_grads",
    "projection_matrix",
    "prune_to_budget",
    "semdedup",
    "semdedup_order",
    "split_budget",
]
