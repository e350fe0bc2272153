"""Within-cluster max similarity: ours vs the full-matrix method (SemDeDup-style: n×n matrix and its
triu copy per cluster) and the column-batched method (NeMo-Curator-style: n×1024 blocks over the
whole rectangle), all in plain torch on the same data. FLOPs reported are the triangle's:
Σ_c n_c²·D. CPU: N=100k, D=384, K=50 Zipf-sized clusters, and one cluster of 20k.
GPU: N=1M, D=1024, K=1000 Zipf-sized, and one cluster of 200k."""

from __future__ import annotations

import pytest
import torch

import adaptinf_fast as af
from conftest import CUDA, gemm_tflops, sync

DEVICE = "cuda" if CUDA else "cpu"
if CUDA:
    CASES = {"zipf-N1M-K1000": (1_000_000, 1024, 1000), "one-cluster-200k": (200_000, 1024, 1)}
else:
    CASES = {"zipf-N100k-K50": (100_000, 384, 50), "one-cluster-20k": (20_000, 384, 1)}
MAX_FULL_ENTRIES = (60_000**2) if CUDA else (25_000**2)


def make(n, d, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    if k == 1:
        labels = torch.zeros(n, dtype=torch.long)
    else:
        w = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)  # Zipf sizes
        labels = torch.multinomial(w / w.sum(), n, replacement=True, generator=g)
    x = torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1).to(DEVICE), labels.to(DEVICE)


def full_matrix(x, labels):
    out = torch.empty(len(x), device=x.device)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        s = x[idx] @ x[idx].T
        s.fill_diagonal_(0)
        out[idx] = torch.triu(s, diagonal=1).max(0).values
    return out


def column_batched(x, labels, block=1024):
    out = torch.empty(len(x), device=x.device)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        e = x[idx]
        n = len(idx)
        for c0 in range(0, n, block):
            s = e @ e[c0 : c0 + block].T  # the whole rectangle: every row against this column block
            rows = torch.arange(n, device=x.device)[:, None]
            cols = torch.arange(c0, min(n, c0 + block), device=x.device)[None, :]
            out[idx[c0 : c0 + block]] = s.masked_fill(rows >= cols, float("-inf")).max(0).values
    return out


def _record(benchmark, labels, d, method, peak=None):
    sizes = torch.bincount(labels).double()
    flops = float((sizes * sizes).sum()) * d  # triangle: n_c²/2 pairs × 2·D
    tflops = flops / benchmark.stats.stats.mean / 1e12
    benchmark.extra_info.update(method=method, device=DEVICE, flops_triangle=flops, tflops=round(tflops, 4),
                                fraction_of_gemm=round(tflops / gemm_tflops(DEVICE), 4), n=len(labels), d=d,
                                largest_cluster=int(sizes.max()))
    if peak is not None:
        benchmark.extra_info["peak_memory_gib"] = round(peak, 3)  # GPU: allocator peak; CPU: added RSS


_PEAK = """
import sys, torch
sys.path.insert(0, {here!r})
import test_dedup_bench as b


def hwm():  # this address space's resident high-water mark (ru_maxrss would include the parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


x, labels = b.make(*b.CASES[{case!r}])
base = hwm()
{call}
print((hwm() - base) / 2**20)
"""


def cpu_peak_gib(case: str, call: str) -> float:
    """Peak resident memory the call adds on top of its inputs, measured in a fresh process."""
    import os
    import subprocess
    import sys

    code = _PEAK.format(here=os.path.dirname(__file__), case=case, call=call)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _run(benchmark, fn, case=None, call=None):
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(lambda: (fn(), sync()), rounds=1, iterations=1)
    if CUDA:
        return torch.cuda.max_memory_allocated() / 2**30
    return cpu_peak_gib(case, call) if call else None


@pytest.mark.parametrize("backend", ["triton", "cuda"] if CUDA else ["auto"])
@pytest.mark.parametrize("case", list(CASES))
def test_ours(benchmark, case, backend):
    if backend != "auto" and backend not in af.available_backends(DEVICE)["cluster_max_similarity"]:
        pytest.skip(f"{backend} not available for cluster_max_similarity on {DEVICE}")
    x, labels = make(*CASES[case])
    peak = _run(benchmark, lambda: af.cluster_max_similarity(x, labels, backend=backend), case,
                "b.af.cluster_max_similarity(x, labels)")
    _record(benchmark, labels, x.shape[1], f"adaptinf_fast cluster_max_similarity[{backend}] (triangle tiles)", peak)


@pytest.mark.parametrize("case", list(CASES))
def test_full_matrix(benchmark, case):
    x, labels = make(*CASES[case])
    if int(torch.bincount(labels).max()) ** 2 > MAX_FULL_ENTRIES:
        pytest.skip("the n×n matrix of the largest cluster does not fit")
    peak = _run(benchmark, lambda: full_matrix(x, labels), case, "b.full_matrix(x, labels)")
    _record(benchmark, labels, x.shape[1], "full matrix + triu (SemDeDup-style)", peak)


@pytest.mark.parametrize("case", list(CASES))
def test_column_batched(benchmark, case):
    x, labels = make(*CASES[case])
    peak = _run(benchmark, lambda: column_batched(x, labels), case, "b.column_batched(x, labels)")
    _record(benchmark, labels, x.shape[1], "column blocks of 1024 over the rectangle (NeMo-style)", peak)


def test_results_agree():
    x, labels = make(3000, 64, 5)
    ours, _ = af.cluster_max_similarity(x, labels)
    ours = ours.clamp_min(0)  # the full-matrix method floors at 0
    torch.testing.assert_close(ours, full_matrix(x, labels).clamp_min(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, column_batched(x, labels).clamp_min(0), rtol=0, atol=1e-5)
