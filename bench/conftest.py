"""Shared benchmark helpers: device stamp, the device's measured GEMM rate, result rows.

Run a suite with ``python -m pytest bench/<suite>.py --benchmark-json bench/results/<name>.json``;
pytest-benchmark stamps the JSON with machine and commit info; every row also carries
``extra_info`` with FLOPs, achieved TFLOP/s and the fraction of the GEMM rate measured in the same
run on the same device (fp32 on CPU, bf16 on GPU). With ``BENCH_JSONL=path`` each case is also
appended to that file as one JSON line the moment it finishes (pytest-benchmark writes its JSON only
at the end, so a run cut off by a time limit would otherwise keep nothing).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import time

import pytest
import torch

CUDA = torch.cuda.is_available()


def sync():
    if CUDA:
        torch.cuda.synchronize()


def device_name() -> str:
    if CUDA:
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model} ({torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=None)
def gemm_tflops(device: str) -> float:
    """Measured dense GEMM rate: fp32 on CPU, bf16 on GPU (best of a few 4096-size products)."""
    n = 4096 if device == "cuda" else 2048
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


@pytest.fixture
def record(benchmark):
    """record(flops, device, **extra): attach throughput and context to the benchmark row."""

    def _record(flops: float, device: str, **extra):
        mean = benchmark.stats.stats.mean
        tflops = flops / mean / 1e12
        peak = gemm_tflops(device)
        benchmark.extra_info.update(
            device=device_name() if device != "cpu" or not CUDA else device_name(),
            flops=flops, tflops=round(tflops, 4), gemm_tflops=round(peak, 3),
            fraction_of_gemm=round(tflops / peak, 4), torch=torch.__version__, **extra,
        )

    return _record


@pytest.fixture(autouse=True)
def _row_per_case(request):
    """Append the finished case to $BENCH_JSONL (see the module docstring)."""
    yield
    path = os.environ.get("BENCH_JSONL")
    bm = request.node.funcargs.get("benchmark")
    if not path or bm is None or getattr(bm, "stats", None) is None:
        return
    st = bm.stats.stats
    row = {"name": request.node.name, "mean": st.mean, "min": st.min, "rounds": st.rounds,
           "device": device_name(), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "extra_info": dict(bm.extra_info)}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
