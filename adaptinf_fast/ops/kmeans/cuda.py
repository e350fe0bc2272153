"""CUDA backend of the fused k-means assignment (kernels/kmeans_assign.cu).

Same contract as ``reference.assign``: (labels int64, squared distance or cosine float32), ties to
the lowest centroid index.

* float32 rows, where the pipelined kernels run (sm_80 or later, ``_C.pipeline_arch``): the same
  16-bit screening with float32 decisions as the Triton backend (``screened.py``): the kernel
  multiplies rows and centroids rounded to fp16 (unit rows) or bf16 on tensor cores and reports
  each row's best, index and second best; near ties are recomputed in float32, the winners' values
  are float32. Labels equal float32 arithmetic.
* fp16/bf16 rows are multiplied in their own type (centroids rounded to it, norms from the float32
  centroids), on the pipelined kernels where they run.
* Elsewhere (ADAPTINF_CUDA_PIPELINE=0, GPUs before sm_80 or with under 129 KiB of shared memory per
  block) float32 rows go to the WMMA kernel in split tf32 (about fp32 accuracy).
"""

from __future__ import annotations

import torch

from .. import _cuda_util as cu
from .. import screen
from . import screened
from .reference import kernel_norms
from .screened import ScreenedRows


def screened_rows(x: torch.Tensor, metric: str) -> ScreenedRows | None:
    """The screening copy of float32 rows (reused across Lloyd iterations), or None where this
    backend does not screen (16-bit rows, or no pipelined kernel)."""
    if x.dtype in (torch.float16, torch.bfloat16) or x.shape[0] == 0:
        return None
    dtype = screen.screen_dtype(metric == "cosine")
    if not cu.pipelined(dtype, screen.padded_width(x.shape[1]), x.device):
        return None
    return screened.screened_rows(x, metric)


def _launch(x: torch.Tensor, c: torch.Tensor, metric: str, cn: torch.Tensor, xn: torch.Tensor,
            second: torch.Tensor | None = None):
    n, d = x.shape
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    values = torch.empty(n, dtype=torch.float32, device=x.device)
    stream, device = cu.stream_and_device(x)
    cu.kernels().kmeans_assign(x.data_ptr(), c.data_ptr(), cu.DTYPE_CODES[x.dtype], cn.data_ptr(), xn.data_ptr(),
                               labels.data_ptr(), values.data_ptr(), n, c.shape[0], d, metric == "cosine", stream,
                               device, second.data_ptr() if second is not None else 0)
    return labels, values


def screened_assign(rows: ScreenedRows, centroids: torch.Tensor, metric: str, cn: torch.Tensor):
    """One pipelined launch on the screening copy: (labels int64, best score, second-best score)."""
    x = rows.low
    c = screen.low_copy(centroids, x.dtype)  # same padded width as the rows
    second = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    labels, best = _launch(x, c, metric, cn, cn, second)  # with `second`, the raw scores; ‖x‖² unused
    return labels, best, second


def assign(x: torch.Tensor, centroids: torch.Tensor, metric: str, c_sqnorm: torch.Tensor | None = None,
           x_sqnorm: torch.Tensor | None = None, values: bool = True, rows: ScreenedRows | None = None):
    """Same contract as ``reference.assign``: (labels int64, squared distance or cosine float32);
    ``values=False`` may return None as the second item. ``rows``: ``screened_rows(x, metric)``."""
    n = x.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device), torch.empty(0, dtype=torch.float32, device=x.device)
    if x.dtype == torch.float32:
        rows = rows if rows is not None else screened_rows(x, metric)
        if rows is not None:
            return screened.assign(screened_assign, x, centroids, metric, c_sqnorm, x_sqnorm, values, rows)
    dtype = cu.kernel_dtype(x)
    cn, xn = kernel_norms(x, centroids, metric, c_sqnorm, x_sqnorm)
    return _launch(x.to(dtype).contiguous(), centroids.to(dtype).contiguous(), metric, cn, xn)
