"""CUDA backend of the fused k-means assignment (kernels/kmeans_assign.cu).

Same contract as ``reference.assign``: (labels int64, squared distance or cosine float32), ties to
the lowest centroid index. fp16/bf16 rows are multiplied in their own type (centroids rounded to
it, norms from the float32 centroids); float32 rows in split tf32 (about fp32 accuracy).
"""

from __future__ import annotations

import torch

from .. import _cuda_util as cu
from .reference import kernel_norms


def assign(x: torch.Tensor, centroids: torch.Tensor, metric: str, c_sqnorm: torch.Tensor | None = None,
           x_sqnorm: torch.Tensor | None = None, values: bool = True):
    """Same contract as ``reference.assign``: (labels int64, squared distance or cosine float32)."""
    n, d = x.shape
    k = centroids.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    values = torch.empty(n, dtype=torch.float32, device=x.device)
    if n == 0:
        return labels, values
    dtype = cu.kernel_dtype(x)
    xk = x.to(dtype).contiguous()
    ck = centroids.to(dtype).contiguous()
    cn, xn = kernel_norms(x, centroids, metric, c_sqnorm, x_sqnorm)
    stream, device = cu.stream_and_device(x)
    cu.kernels().kmeans_assign(xk.data_ptr(), ck.data_ptr(), cu.DTYPE_CODES[dtype], cn.data_ptr(), xn.data_ptr(),
                               labels.data_ptr(), values.data_ptr(), n, k, d, metric == "cosine", stream, device)
    return labels, values
