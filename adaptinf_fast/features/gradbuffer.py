"""Per-sample gradients of several batches, projected together (DESIGN §2.1, the GPU-speed issue).

One batch holds 8–16 samples; projecting 16 rows at a time leaves the projection kernel bound by
generating R (each R tile serves only 16 rows: ~18% of the tensor-core rate on sm_90 by the static
check, and on CPU R generation dominates). The featurizer therefore writes each batch's exact
per-sample gradients (float32, laid end to end in the featurizer's documented order) into this
buffer and projects ``capacity`` samples in one launch, so every R tile is reused by up to 256
samples. The result is ``project`` of the same rows: features equal the per-batch path up to
float32 summation order.
"""

from __future__ import annotations

import logging

import torch

from ..backends import resolve

log = logging.getLogger("adaptinf_fast")

DEFAULT_SAMPLES = 256
CPU_MEMORY = 2 << 30  # default cap on the buffer's bytes without a GPU
GPU_MEMORY_FRACTION = 0.25  # default cap: this share of the device's free memory


def default_capacity(rows: int, device: torch.device, samples: int, memory: int | None) -> int:
    """Samples per launch: ``samples``, or fewer when a (rows × 4-byte) buffer would exceed ``memory``
    (default: a quarter of the GPU's free memory, or 2 GiB on CPU)."""
    if memory is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory = int(free * GPU_MEMORY_FRACTION)
        else:
            memory = CPU_MEMORY
    return max(0, min(samples, memory // (4 * pitch(rows))))


def pitch(rows: int) -> int:
    """Buffer row width: a multiple of 16 so the kernel loads aligned vectors without a copy (the
    padding columns stay zero and add nothing)."""
    return -(-rows // 16) * 16


class GradientBuffer:
    """``capacity`` rows of ``rows`` gradient entries; ``project`` empties it.

    Args:
        rows: entries per sample (the featurised parameters' total size).
        capacity: samples held at most.
        out_dim, seed, kind, backend: as in ``project``.
        device: where the buffer lives (the model's device).
    """

    def __init__(self, rows: int, capacity: int, out_dim: int, *, seed: int, kind: str, backend: str,
                 device: torch.device):
        self.rows, self.capacity, self.out_dim = rows, capacity, out_dim
        self.seed, self.kind, self.backend = seed, kind, backend
        self.data = torch.zeros(capacity, pitch(rows), dtype=torch.float32, device=device)
        self.fill = 0
        log.debug("gradient buffer: %d samples × %d entries (%.2f GiB)", capacity, rows, self.data.numel() * 4 / 2**30)

    def room(self) -> int:
        return self.capacity - self.fill

    def block(self, b: int, offset: int, numel: int) -> torch.Tensor:
        """The (b, numel) slice where the next ``b`` samples' entries [offset, offset + numel) go."""
        if b > self.room():
            raise ValueError(f"{b} samples do not fit: the buffer has room for {self.room()}")
        return self.data[self.fill : self.fill + b, offset : offset + numel]

    def commit(self, b: int) -> None:
        self.fill += b

    def project(self) -> torch.Tensor:
        """float32 (fill, out_dim) projections of the held samples; the buffer is emptied."""
        out = torch.zeros(self.fill, self.out_dim, dtype=torch.float32, device=self.data.device)
        if self.fill:
            _, impl = resolve("project", self.backend, self.data.device)
            impl.project_into(self.data[: self.fill], out, seed=self.seed, kind=self.kind, row_offset=0)
        self.fill = 0
        return out
