"""Drop-in replacement for TRAK's projectors (``trak.projectors``), as LESS and Adapt-∞ use them.

Change ``from trak.projectors import CudaProjector, ProjectionType`` to
``from adaptinf_fast.compat.trak import CudaProjector, ProjectionType``. TRAK's conventions are
kept: no 1/sqrt(proj_dim) scaling, the result has the gradients' dtype, gradients may be a dict of
per-parameter (B, ...) tensors (concatenated in dict order), and ``model_id`` selects a different
matrix. Unlike TRAK, the matrix does not depend on the GPU model, batch size or block size, any
proj_dim works, and CPU tensors are accepted.

The matrix for (seed, model_id) is ``adaptinf_fast`` R with the 64-bit seed ``model_id·2³² + seed``
(so different model ids never collide; ``seed`` must be < 2³²). It is not TRAK's matrix: features
computed with TRAK and with this shim are different random sketches (both valid JL maps).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import torch

from ..ops.projection import project


class ProjectionType(str, Enum):
    normal = "normal"
    rademacher = "rademacher"


_KINDS = {"normal": "gaussian", "rademacher": "rademacher"}


def vectorize(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate a dict of per-sample gradients (B, ...) into (B, P), in dict order."""
    return torch.cat([v.reshape(v.shape[0], -1) for v in grads.values()], dim=1)


class BasicProjector:
    """TRAK-compatible projector. ``block_size``, ``max_batch_size`` and ``dtype`` are accepted for
    compatibility; the kernel picks its own tiling, and accumulation is always float32."""

    def __init__(self, grad_dim: int, proj_dim: int, seed: int, proj_type: Any = ProjectionType.rademacher,
                 device: Any = "cpu", block_size: int = 100, dtype: torch.dtype = torch.float32,
                 model_id: int = 0, max_batch_size: int = 32, backend: str = "auto", *args, **kwargs):
        kind = proj_type.value if isinstance(proj_type, ProjectionType) else str(proj_type)
        if kind not in _KINDS:
            raise KeyError(f"Projection type {proj_type} not recognized.")
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed is {seed}; the TRAK shim needs 0 <= seed < 2**32 (model_id fills the high bits)")
        self.grad_dim, self.proj_dim, self.seed = int(grad_dim), int(proj_dim), int(seed)
        self.proj_type, self.kind = proj_type, _KINDS[kind]
        self.device, self.dtype, self.model_id, self.backend = torch.device(device), dtype, model_id, backend
        self.block_size, self.max_batch_size = block_size, max_batch_size

    def project(self, grads: torch.Tensor | dict, model_id: int) -> torch.Tensor:
        """(B, grad_dim) gradients (or a dict of them) -> (B, proj_dim) = grads @ R (unscaled)."""
        if isinstance(grads, dict):
            grads = vectorize(grads)
        if grads.dim() != 2 or grads.shape[1] != self.grad_dim:
            raise ValueError(f"grads have shape {tuple(grads.shape)}; expected (B, {self.grad_dim})")
        if not 0 <= int(model_id) < 2**32:
            raise ValueError(f"model_id is {model_id}; expected 0 <= model_id < 2**32")
        self.model_id = model_id
        y = project(grads, self.proj_dim, seed=(int(model_id) << 32) | self.seed, kind=self.kind, backend=self.backend)
        return y.mul_(math.sqrt(self.proj_dim)).to(grads.dtype)

    def free_memory(self) -> None:
        """Nothing is cached between calls; kept for TRAK compatibility."""


class CudaProjector(BasicProjector):
    """Same as ``BasicProjector`` (the fast kernel is chosen by device); TRAK's CUDA-only name."""


__all__ = ["BasicProjector", "CudaProjector", "ProjectionType", "vectorize"]
