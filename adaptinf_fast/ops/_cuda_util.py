"""Small helpers shared by the CUDA backends: the kernel module, dtype codes, stream and device."""

from __future__ import annotations

from types import ModuleType

import torch

from ..backends import cuda_kernels

# csrc/launch.h DType codes
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def kernels() -> ModuleType:
    mod = cuda_kernels()
    if mod is None:  # resolve() checked this already; reaching here means the module went away
        raise RuntimeError("the CUDA backend's extension module is not importable")
    return mod


def kernel_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a kernel takes ``t`` in: fp16/bf16 as they are, anything else as float32."""
    return t.dtype if t.dtype in (torch.float16, torch.bfloat16) else torch.float32


def stream_and_device(t: torch.Tensor) -> tuple[int, int]:
    """(raw CUDA stream, device index) for launches on ``t``'s device; (0, 0) for emulated CPU tensors."""
    if t.device.type != "cuda":
        return 0, 0
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return torch.cuda.current_stream(t.device).cuda_stream, index


def pipelined(dtype: torch.dtype, row_pitch: int, device: torch.device) -> bool:
    """Whether a fresh (so 16-byte aligned) ``dtype`` matrix with ``row_pitch`` elements per row
    would take the pipelined kernels on ``device`` (``_C.pipeline_arch``)."""
    index = (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else 0
    return bool(kernels().pipeline_arch(DTYPE_CODES[dtype], 0, row_pitch, index))
