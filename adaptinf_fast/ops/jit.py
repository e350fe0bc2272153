"""The CUDA kernels through CuPy's NVRTC: the CUDA backend where ``_C`` was not built.

A pip install without nvcc ships ``kernels/*.cu`` in the wheel; with CuPy present
(``pip install adaptinf-fast[cuda12]`` / ``[cuda13]``) this module compiles them at first use with
``cupy.RawModule`` (NVRTC, cached on disk by CuPy under ``CUPY_CACHE_DIR``) and launches them with
the same grids as ``csrc/*_launch.cu``. It exports the ``_C`` launch functions with the same
arguments (raw pointers, sizes, stream, device; see ``_C.pyi``), so ``ops/*/cuda.py`` use it
unchanged. ``ADAPTINF_CUDA_JIT=1`` prefers it even where ``_C`` exists (the GPU check tests both).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

DTYPE_NAMES = {0: "float", 1: "__half", 2: "__nv_bfloat16"}  # csrc/launch.h DType codes
KINDS = {"rademacher": 0, "gaussian": 1}  # kernels/philox.cuh
OPTIONS = ("-std=c++17",)
PIPE_ARCHS = (80, 90)  # kernels/pipe.cuh paths: mma.sync, wgmma (sm_90a only)
FILES = {"project": "project.cu", "kmeans_assign": "kmeans_assign.cu", "max_sim": "max_sim.cu",
         "philox_fill": "philox_fill.cu"}


def kernel_dir() -> Path:
    """The kernel sources: installed with the package, or the source tree's ``kernels/``."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "project.cu").exists():
            return candidate
    raise FileNotFoundError("the CUDA kernel sources (kernels/*.cu) are not installed with adaptinf_fast")


@functools.lru_cache(maxsize=None)
def pipe_constants() -> dict[str, int]:
    """kBK, kBN, kStages, kWarpgroup, kRowBytes as kernels/pipe.cuh defines them."""
    text = (kernel_dir() / "pipe.cuh").read_text()
    return {name: int(v) for name, v in re.findall(r"(kBK|kBN|kStages|kWarpgroup|kRowBytes) = (\d+)", text)}


def pipe_launch(consumers: int) -> tuple[int, int, int]:
    """(block rows, threads, dynamic shared-memory bytes) of a pipelined kernel with ``consumers``
    consumer warpgroups (pipe.cuh Layout<C>)."""
    c = pipe_constants()
    rows = 64 * consumers
    smem = c["kStages"] * (rows + c["kBN"]) * c["kRowBytes"] + 2 * c["kStages"] * 8 + 1024
    return rows, c["kWarpgroup"] * (consumers + 1), smem


@functools.lru_cache(maxsize=None)
def tile_constants() -> dict[str, int]:
    """kTileM, kTileN, kTileK, kThreads as kernels/tile_mma.cuh defines them."""
    text = (kernel_dir() / "tile_mma.cuh").read_text()
    return {name: int(v) for name, v in re.findall(r"(kTile[MNK]|kThreads) = (\d+)", text)}


def name_expressions(op: str) -> list[str]:
    """Every template instance ``op``'s launcher can call (NVRTC name expressions)."""
    types = DTYPE_NAMES.values()
    half = [DTYPE_NAMES[1], DTYPE_NAMES[2]]
    if op == "project":
        return ([f"adaptinf::adaptinf_project<{t}, {k}>" for t in types for k in KINDS.values()]
                + [f"adaptinf::adaptinf_project_pipe<{t}, {a}>" for t in half for a in PIPE_ARCHS])
    if op == "kmeans_assign":
        return ([f"adaptinf::adaptinf_kmeans_assign<{t}, {c}>" for t in types for c in ("true", "false")]
                + [f"adaptinf::adaptinf_kmeans_assign_pipe<{t}, {c}, {a}>" for t in half for c in ("true", "false")
                   for a in PIPE_ARCHS])
    if op == "max_sim":
        return ([f"adaptinf::adaptinf_max_sim<{t}>" for t in types]
                + [f"adaptinf::adaptinf_max_sim_pipe<{t}, {a}>" for t in half for a in PIPE_ARCHS])
    if op == "philox_fill":
        return ["adaptinf_philox_fill"]
    raise KeyError(op)


def program(op: str) -> tuple[str, list[str], list[str]]:
    """(source, name expressions, NVRTC options without -arch) of ``op``'s kernels."""
    return f'#include "{FILES[op]}"\n', name_expressions(op), [*OPTIONS, f"-I{kernel_dir()}"]


# -- launching through CuPy -------------------------------------------------------------------------

def cupy_or_none():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@functools.lru_cache(maxsize=None)
def _module(op: str):
    import cupy

    source, names, options = program(op)
    return cupy.RawModule(code=source, options=tuple(options), name_expressions=names)


@functools.lru_cache(maxsize=None)
def _function(op: str, name: str, device: int, smem: int):
    """The kernel ``name`` on ``device``, its dynamic shared-memory limit raised once to ``smem``
    (above 48 KiB it must be asked for; the attribute persists, so later launches skip the call)."""
    import cupy

    with cupy.cuda.Device(device):
        fn = _module(op).get_function(name)
        if smem:
            fn.max_dynamic_shared_size_bytes = smem
    return fn


def _launch(op: str, name: str, grid: tuple[int, int, int], threads: int, args: tuple, stream: int, device: int,
            smem: int = 0):
    import cupy

    if grid[0] > 0x7FFFFFFF or grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"{op}: the problem needs a grid beyond CUDA's limits; split the call")
    with cupy.cuda.Device(device):
        fn = _function(op, name, device, smem)
        if smem:
            fn(grid, (threads,), args, stream=cupy.cuda.ExternalStream(stream), shared_mem=smem)
        else:
            fn(grid, (threads,), args, stream=cupy.cuda.ExternalStream(stream))


def pipeline_arch(dtype: int, ptr: int, row_pitch: int, device: int) -> int:
    """Same contract as ``_C.pipeline_arch``. NVRTC here compiles for the architecture CuPy picks,
    which is not sm_90a, so the JIT takes the mma.sync path (80) on every GPU from sm_80 on and
    leaves the wgmma path to ``_C``."""
    if os.environ.get("ADAPTINF_CUDA_PIPELINE") == "0" or dtype == 0 or ptr % 16 or row_pitch % 8:
        return 0
    return _device_pipe_arch(device)


@functools.lru_cache(maxsize=None)
def _device_pipe_arch(device: int) -> int:
    """Asked once per device (launches are hot; the answer cannot change while the process runs)."""
    import cupy

    major = int(cupy.cuda.Device(device).compute_capability[:-1] or 0)
    optin = cupy.cuda.runtime.deviceGetAttribute(97, device)  # cudaDevAttrMaxSharedMemoryPerBlockOptin
    return 80 if major >= 8 and optin >= pipe_launch(2)[2] else 0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


P, I64, U64 = np.uint64, np.int64, np.uint64  # pointers and 64-bit ints, as the kernels declare them


def project(x, dtype, ws, batch, p, k, ldx, seed, row_offset, p_per_split, kind, stream, device) -> None:
    if batch == 0 or p == 0 or k == 0:
        return
    if p_per_split < 1:
        raise ValueError("project: p_per_split must be >= 1")
    args = (P(x), P(ws), I64(batch), I64(p), I64(k), I64(ldx), U64(seed), U64(row_offset), I64(p_per_split))
    arch = pipeline_arch(dtype, x, ldx, device) if kind == "rademacher" else 0
    if arch:
        if p_per_split % 8:  # the producers copy x in 16-byte chunks from each split's first column
            raise ValueError("project: p_per_split must be a multiple of 8 for 16-bit inputs with 16-byte aligned "
                             f"rows (the pipelined kernel copies x in 16-byte chunks); got {p_per_split}")
        rows, threads, smem = pipe_launch(2)
        grid = (_cdiv(k, pipe_constants()["kBN"]), _cdiv(batch, rows), _cdiv(p, p_per_split))
        name = f"adaptinf::adaptinf_project_pipe<{DTYPE_NAMES[dtype]}, {arch}>"
        return _launch("project", name, grid, threads, args, stream, device, smem)
    c = tile_constants()
    grid = (_cdiv(k, c["kTileN"]), _cdiv(batch, c["kTileM"]), _cdiv(p, p_per_split))
    name = f"adaptinf::adaptinf_project<{DTYPE_NAMES[dtype]}, {KINDS[kind]}>"
    _launch("project", name, grid, c["kThreads"], args, stream, device)


def kmeans_assign(x, c, dtype, c_sqnorm, x_sqnorm, labels, values, n, k, d, cosine, stream, device, second=0) -> None:
    if n == 0:
        return
    if k < 1 or d < 1:
        raise ValueError("kmeans_assign: k and d must be >= 1")
    args = (P(x), P(c), P(c_sqnorm), P(x_sqnorm), P(labels), P(values), I64(n), I64(k), I64(d))
    flag = "true" if cosine else "false"
    arch = pipeline_arch(dtype, x, d, device) if c % 16 == 0 else 0
    if arch:
        rows, threads, smem = pipe_launch(2)
        name = f"adaptinf::adaptinf_kmeans_assign_pipe<{DTYPE_NAMES[dtype]}, {flag}, {arch}>"
        return _launch("kmeans_assign", name, (_cdiv(n, rows), 1, 1), threads, (*args[:6], P(second), *args[6:]),
                       stream, device, smem)
    if second:
        raise ValueError("kmeans_assign: second-best scores come from the pipelined kernels only")
    t = tile_constants()
    name = f"adaptinf::adaptinf_kmeans_assign<{DTYPE_NAMES[dtype]}, {flag}>"
    _launch("kmeans_assign", name, (_cdiv(n, t["kTileM"]), 1, 1), t["kThreads"], args, stream, device)


def max_sim(xs, dtype, cluster_start, tiles, n_tiles, best, arg, n, d, stream, device, second=0) -> None:
    if n == 0 or n_tiles == 0:
        return
    if d < 1:
        raise ValueError("max_sim: d must be >= 1")
    args = (P(xs), P(cluster_start), P(tiles), P(best), P(arg), I64(n), I64(d))
    arch = pipeline_arch(dtype, xs, d, device)
    if arch:
        _, threads, smem = pipe_launch(1)
        name = f"adaptinf::adaptinf_max_sim_pipe<{DTYPE_NAMES[dtype]}, {arch}>"
        return _launch("max_sim", name, (n_tiles, 1, 1), threads, (*args[:5], P(second), *args[5:]), stream, device,
                       smem)
    if second:
        raise ValueError("max_sim: second-best similarities come from the pipelined kernels only")
    name = f"adaptinf::adaptinf_max_sim<{DTYPE_NAMES[dtype]}>"
    _launch("max_sim", name, (n_tiles, 1, 1), tile_constants()["kThreads"], args, stream, device)


def philox_fill(out, rows, cols, seed, row_offset, kind, scale, stream, device) -> None:
    if rows == 0 or cols == 0:
        return
    _launch("philox_fill", "adaptinf_philox_fill", (_cdiv(rows * _cdiv(cols, 32), 256), 1, 1), 256,
            (P(out), I64(rows), I64(cols), U64(seed), U64(row_offset), np.int32(KINDS[kind]), np.float32(scale)),
            stream, device)


def cuda_device_count() -> int:
    cupy = cupy_or_none()
    try:
        return cupy.cuda.runtime.getDeviceCount() if cupy is not None else 0
    except Exception:  # noqa: BLE001 - no driver: no device
        return 0


def cuda_runtime_version() -> int:
    cupy = cupy_or_none()
    return cupy.cuda.runtime.runtimeGetVersion() if cupy is not None else 0


__version__ = "jit"
