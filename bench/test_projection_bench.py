"""Dense random projection: our backends beside a materialised-R matmul, TRAK BasicProjector and
(on GPU) fast_jl, on the shapes of the projection issue. FLOPs = 2·B·P·k; timed calls regenerate R."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import adaptinf_fast as af
from conftest import CUDA, sync

CPU_SHAPES = [(b, p, k) for b in (16, 64) for p in (2**17, 2**20) for k in (1024, 4096)]
GPU_SHAPES = [(b, p, k) for b in (16, 256) for p in (2**20, 2**23, 2**25) for k in (4096, 8192)] + [(256, 2**26, 8192)]
SHAPES = GPU_SHAPES if CUDA else CPU_SHAPES
DEVICE = "cuda" if CUDA else "cpu"
ids = lambda s: "B{}-P2^{}-k{}".format(s[0], s[1].bit_length() - 1, s[2])  # noqa: E731
MAX_DENSE_R_BYTES = (24 << 30) if CUDA else (2 << 30)  # R in bf16 on GPU, fp32 on CPU


def run(benchmark, fn, rounds):
    def timed():
        out = fn()
        sync()
        return out

    return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1 if CUDA else 0)


def rounds_for(b, p, k):
    return 5 if CUDA else max(1, min(3, int(2**36 // (b * p * k))))


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("backend", ["triton", "cuda"] if CUDA else ["torch"])  # GPU: torch is only the oracle
def test_ours(benchmark, record, shape, backend):
    b, p, k = shape
    if backend not in af.available_backends(DEVICE)["project"]:
        pytest.skip(f"{backend} not available for project on {DEVICE}")
    x = torch.randn(b, p, device=DEVICE, dtype=torch.bfloat16 if CUDA else torch.float32)
    seeds = iter(range(10**6))  # a new seed every call: nothing cached across calls
    run(benchmark, lambda: af.project(x, k, seed=next(seeds), backend=backend), rounds_for(b, p, k))
    record(2 * b * p * k, DEVICE, method=f"adaptinf_fast[{backend}]", dtype=str(x.dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_dense_matmul_materialised_r(benchmark, record, shape):
    b, p, k = shape
    dtype = torch.bfloat16 if CUDA else torch.float32
    if p * k * dtype.itemsize > MAX_DENSE_R_BYTES:
        pytest.skip("R does not fit in memory")
    x = torch.randn(b, p, device=DEVICE, dtype=dtype)
    r = torch.randn(p, k, device=DEVICE, dtype=dtype)
    run(benchmark, lambda: x @ r, rounds_for(b, p, k))
    record(2 * b * p * k, DEVICE, method=f"torch matmul, R materialised in {str(dtype)[6:]} (generation not timed)")


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_trak_basic_projector(benchmark, record, shape):
    if importlib.util.find_spec("trak") is None:
        pytest.skip("traker not installed")
    from trak.projectors import BasicProjector

    b, p, k = shape
    if not CUDA and b * p * k > 2**35:
        pytest.skip("over 2 minutes per call on CPU")
    x = torch.randn(b, p, device=DEVICE)
    proj = BasicProjector(p, k, 0, "rademacher", DEVICE, block_size=100)
    ids_ = iter(range(10**6))
    run(benchmark, lambda: proj.project(x, next(ids_)), rounds_for(b, p, k))
    record(2 * b * p * k, DEVICE, method="trak BasicProjector (block_size=100)")


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_fast_jl(benchmark, record, shape):
    if not CUDA or importlib.util.find_spec("fast_jl") is None:
        pytest.skip("fast_jl needs a GPU and its package")
    import fast_jl

    b, p, k = shape
    x = torch.randn(b, p, device="cuda", dtype=torch.float16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    fn = getattr(fast_jl, f"project_rademacher_{8 if b <= 8 else 16 if b <= 16 else 32}")
    rows = 8 if b <= 8 else 16 if b <= 16 else 32
    run(benchmark, lambda: [fn(x[i : i + rows], k, 0, sms) for i in range(0, b, rows)], rounds_for(b, p, k))
    record(2 * b * p * k, DEVICE, method="fast_jl (TRAK CudaProjector kernel)")
