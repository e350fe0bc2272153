"""The public ops as ``torch.library`` custom ops, so ``torch.compile`` traces through them.

Inside a compiled region (``torch.compiler.is_compiling()``) ``project``, ``kmeans_assign`` and
``cluster_max_similarity`` call ``torch.ops.adaptinf.*``: an opaque node with a fake (meta)
implementation that gives the output shapes and dtypes, so ``torch.compile(fullgraph=True)`` does not
break the graph at them (their data-dependent checks — NaN rows, label ranges — run when the node
runs). Eager calls skip this layer and cost nothing extra.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import custom_op

_U64 = 1 << 64


def signed_seed(seed: int) -> int:
    """A 64-bit unsigned seed as the int64 a custom-op schema carries (two's complement)."""
    return seed - _U64 if seed >= 1 << 63 else seed


@custom_op("adaptinf::project", mutates_args=())
def project_op(x: Tensor, out_dim: int, seed: int, kind: str, row_offset: int, nonfinite: str, backend: str) -> Tensor:
    from .projection import project

    return project(x, out_dim, seed=seed % _U64, kind=kind, row_offset=row_offset, nonfinite=nonfinite, backend=backend)


@project_op.register_fake
def _(x, out_dim, seed, kind, row_offset, nonfinite, backend):
    return x.new_empty((x.shape[0], out_dim), dtype=torch.float32)


@custom_op("adaptinf::kmeans_assign", mutates_args=())
def kmeans_assign_op(x: Tensor, centroids: Tensor, metric: str, nonfinite: str, backend: str) -> tuple[Tensor, Tensor]:
    from .kmeans import kmeans_assign

    labels, value = kmeans_assign(x, centroids, metric=metric, nonfinite=nonfinite, backend=backend)
    return labels, value


@kmeans_assign_op.register_fake
def _(x, centroids, metric, nonfinite, backend):
    return x.new_empty(x.shape[0], dtype=torch.int64), x.new_empty(x.shape[0], dtype=torch.float32)


@custom_op("adaptinf::cluster_max_similarity", mutates_args=())
def max_similarity_op(x: Tensor, labels: Tensor, order: Optional[Tensor], exact: bool, nonfinite: str,
                      backend: str) -> tuple[Tensor, Tensor]:
    from .dedup import cluster_max_similarity

    m, index = cluster_max_similarity(x, labels, order=order, exact=exact, nonfinite=nonfinite, backend=backend)
    return m, index


@max_similarity_op.register_fake
def _(x, labels, order, exact, nonfinite, backend):
    return x.new_empty(x.shape[0], dtype=torch.float32), x.new_empty(x.shape[0], dtype=torch.int64)


def compiling() -> bool:
    return torch.compiler.is_compiling()
