"""``backend="faiss"`` for the k-means assignment: exact flat search (IndexFlatL2 / IndexFlatIP).

faiss computes all distances with a GEMM and keeps data on the host (GPU indexes copy to and from
it); it is offered as the baseline users already know. Ties are broken by faiss, not necessarily
towards the lowest index.
"""

from __future__ import annotations

import numpy as np
import torch


def assign(x: torch.Tensor, centroids: torch.Tensor, metric: str, x_sqnorm: torch.Tensor | None = None,
           values: bool = True):
    import faiss

    xs = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    cs = np.ascontiguousarray(centroids.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(cs.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(cs.shape[1])
    if x.is_cuda and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), x.device.index or 0, index)
    index.add(cs)
    values, labels = index.search(xs, 1)
    return (torch.from_numpy(labels[:, 0].astype(np.int64)).to(x.device),
            torch.from_numpy(values[:, 0].copy()).clamp_min_(0.0 if metric == "l2" else -1.0).to(x.device))
