"""Record the Triton launches the package's launchers make, without a GPU.

Inside ``recording()`` every ``kernel[grid](...)`` call is captured instead of run, and the
launchers see a GPU of ``sm_count`` SMs. Callers pass shape-only tensors (``device="meta"``): the
launchers' own code chooses tiles, splits and dtypes exactly as it would for CUDA tensors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch


@dataclass
class Launch:
    fn: Any  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict
    grid: tuple

    @property
    def name(self) -> str:
        return self.fn.__name__ if hasattr(self.fn, "__name__") else self.fn.fn.__name__


class ShapeTensor:
    """What Triton's specialisation reads off a tensor argument: dtype and pointer alignment."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self.shape = tuple(t.shape)
        self._offset_bytes = t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:  # fresh allocations are 256-byte aligned; views keep their offset
        return 1 << 20 | self._offset_bytes


@dataclass
class Recorder:
    launches: list[Launch] = field(default_factory=list)


def _wrap(a: Any) -> Any:
    return ShapeTensor(a) if isinstance(a, torch.Tensor) else a


@contextlib.contextmanager
def recording(arch: int = 90, sm_count: int = 132) -> Iterator[Recorder]:
    """Capture launches; the launchers are told they run on an sm_``arch`` GPU of ``sm_count`` SMs
    (H100/H200: 132)."""
    from triton.runtime.jit import JITFunction

    from adaptinf_fast import backends
    from adaptinf_fast.ops import _triton_util as tu

    rec = Recorder()
    real_why = backends._why_unusable

    def why(backend, device):  # meta tensors stand for CUDA tensors here
        return None if backend == "triton" and device.type == "meta" else real_why(backend, device)

    real_run, real_sm, real_cap = JITFunction.run, tu.sm_count, tu.capability

    def run(self, *args, grid, warmup, **kwargs):
        g = grid(kwargs) if callable(grid) else tuple(grid)
        rec.launches.append(Launch(self, tuple(_wrap(a) for a in args), {k: _wrap(v) for k, v in kwargs.items()}, g))
        return None

    JITFunction.run = run
    tu.sm_count = lambda device: sm_count
    tu.capability = lambda device: (arch // 10, arch % 10)
    backends._why_unusable = why
    try:
        yield rec
    finally:
        JITFunction.run = real_run
        tu.sm_count = real_sm
        tu.capability = real_cap
        backends._why_unusable = real_why
