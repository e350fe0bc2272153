"""Small helpers shared by the Triton backends (imported only when a Triton kernel is used)."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..backends import triton_interpreting

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def tl_dtype(dtype: torch.dtype):
    return _TL_DTYPES[dtype]


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(device: torch.device) -> tuple[int, int]:
    """Compute capability the launch targets: tiles are chosen per architecture (the interpreter
    and other devices get the sm_90 choice)."""
    if device.type != "cuda":
        return (9, 0)
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def interpreting() -> bool:
    return triton_interpreting()


@triton.jit
def dot(a, b, acc, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + a @ b with both operands rounded to DOT_DTYPE and fp32 accumulation.

    Triton's CPU interpreter mishandles bf16 dot operands, so there the rounded operands are
    multiplied in fp32: products of two bf16/fp16 values are exact in fp32, so this is the same
    arithmetic as the tensor-core path up to summation order.
    """
    if INTERPRET:
        return tl.dot(a.to(DOT_DTYPE).to(tl.float32), b.to(DOT_DTYPE).to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=PRECISION)
