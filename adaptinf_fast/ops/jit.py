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
import re
from pathlib import Path

import numpy as np

DTYPE_NAMES = {0: "float", 1: "__half", 2: "__nv_bfloat16"}  # csrc/launch.h DType codes
KINDS = {"rademacher": 0, "gaussian": 1}  # kernels/philox.cuh
OPTIONS = ("-std=c++17",)
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
def tile_constants() -> dict[str, int]:
    """kTileM, kTileN, kTileK, kThreads as kernels/tile_mma.cuh defines them."""
    text = (kernel_dir() / "tile_mma.cuh").read_text()
    return {name: int(v) for name, v in re.findall(r"(kTile[MNK]|kThreads) = (\d+)", text)}


def name_expressions(op: str) -> list[str]:
    """Every template instance ``op``'s launcher can call (NVRTC name expressions)."""
    types = DTYPE_NAMES.values()
    if op == "project":
        return [f"adaptinf::adaptinf_project<{t}, {k}>" for t in types for k in KINDS.values()]
    if op == "kmeans_assign":
        return [f"adaptinf::adaptinf_kmeans_assign<{t}, {c}>" for t in types for c in ("true", "false")]
    if op == "max_sim":
        return [f"adaptinf::adaptinf_max_sim<{t}>" for t in types]
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


def _launch(op: str, name: str, grid: tuple[int, int, int], threads: int, args: tuple, stream: int, device: int):
    import cupy

    if grid[0] > 0x7FFFFFFF or grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"{op}: the problem needs a grid beyond CUDA's limits; split the call")
    with cupy.cuda.Device(device):
        fn = _module(op).get_function(name)
        fn(grid, (threads,), args, stream=cupy.cuda.ExternalStream(stream))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


P, I64, U64 = np.uint64, np.int64, np.uint64  # pointers and 64-bit ints, as the kernels declare them


def project(x, dtype, ws, batch, p, k, ldx, seed, row_offset, p_per_split, kind, stream, device) -> None:
    if batch == 0 or p == 0 or k == 0:
        return
    if p_per_split < 1:
        raise ValueError("project: p_per_split must be >= 1")
    c = tile_constants()
    grid = (_cdiv(k, c["kTileN"]), _cdiv(batch, c["kTileM"]), _cdiv(p, p_per_split))
    name = f"adaptinf::adaptinf_project<{DTYPE_NAMES[dtype]}, {KINDS[kind]}>"
    _launch("project", name, grid, c["kThreads"], (P(x), P(ws), I64(batch), I64(p), I64(k), I64(ldx), U64(seed),
                                                   U64(row_offset), I64(p_per_split)), stream, device)


def kmeans_assign(x, c, dtype, c_sqnorm, x_sqnorm, labels, values, n, k, d, cosine, stream, device) -> None:
    if n == 0:
        return
    if k < 1 or d < 1:
        raise ValueError("kmeans_assign: k and d must be >= 1")
    t = tile_constants()
    name = f"adaptinf::adaptinf_kmeans_assign<{DTYPE_NAMES[dtype]}, {'true' if cosine else 'false'}>"
    _launch("kmeans_assign", name, (_cdiv(n, t["kTileM"]), 1, 1), t["kThreads"],
            (P(x), P(c), P(c_sqnorm), P(x_sqnorm), P(labels), P(values), I64(n), I64(k), I64(d)), stream, device)


def max_sim(xs, dtype, cluster_start, tiles, n_tiles, best, arg, n, d, stream, device) -> None:
    if n == 0 or n_tiles == 0:
        return
    if d < 1:
        raise ValueError("max_sim: d must be >= 1")
    name = f"adaptinf::adaptinf_max_sim<{DTYPE_NAMES[dtype]}>"
    _launch("max_sim", name, (n_tiles, 1, 1), tile_constants()["kThreads"],
            (P(xs), P(cluster_start), P(tiles), P(best), P(arg), I64(n), I64(d)), stream, device)


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
