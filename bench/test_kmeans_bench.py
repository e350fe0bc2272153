"""k-means fit: ours vs scikit-learn KMeans / MiniBatchKMeans and faiss (CPU); on GPU vs faiss-gpu,
flash-kmeans, fast-pytorch-kmeans and a plain torch GEMM+argmin where installed. Iteration counts
differ between stopping rules, so rows carry seconds per iteration and the final inertia; FLOPs
per iteration = 2·N·K·D."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import adaptinf_fast as af
from conftest import CUDA, gemm_tflops, sync

DEVICE = "cuda" if CUDA else "cpu"
N_MAX = 1_000_000 if CUDA else 100_000
CASES = [(d, k) for d in ((128, 1024, 8192) if CUDA else (128, 384)) for k in ((10, 1024, 16384) if CUDA else (10, 256))]
HOST_BYTES = 4 << 30  # float32 data per D: 1M rows up to D=1024, 131k at D=8192 (fits host and an 80 GB GPU)


def rows_for(d: int) -> int:
    return min(N_MAX, HOST_BYTES // (4 * d))
ITERS = 20


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    out = {}
    for d in sorted({d for d, _ in CASES}):
        centers = rng.standard_normal((64, d)).astype(np.float32) * 2
        n = rows_for(d)
        out[d] = (centers[rng.integers(0, 64, n)] + rng.standard_normal((n, d), dtype=np.float32))
    return out


def _row(benchmark, d, k, n_iter, inertia, method):
    per_iter = benchmark.stats.stats.mean / max(n_iter, 1)
    n = rows_for(d)
    tflops = 2 * n * k * d / per_iter / 1e12
    benchmark.extra_info.update(method=method, device=DEVICE, n=n, d=d, k=k, n_iter=int(n_iter),
                                seconds_per_iter=round(per_iter, 5), inertia=float(inertia),
                                tflops=round(tflops, 4), fraction_of_gemm=round(tflops / gemm_tflops(DEVICE), 4))


def _once(benchmark, fn):
    def timed():
        out = fn()
        sync()
        return out

    return benchmark.pedantic(timed, rounds=1, iterations=1)


@pytest.mark.parametrize("backend", ["triton", "cuda"] if CUDA else ["auto"])
@pytest.mark.parametrize("d,k", CASES, ids=lambda v: str(v))
def test_ours(benchmark, data, d, k, backend):
    if backend != "auto" and backend not in af.available_backends(DEVICE)["kmeans_assign"]:
        pytest.skip(f"{backend} not available for kmeans_assign on {DEVICE}")
    x = torch.from_numpy(data[d]).to(DEVICE)
    km = _once(benchmark, lambda: af.KMeans(k, max_iter=ITERS, tol=0.0, seed=0, backend=backend).fit(x))
    _row(benchmark, d, k, km.n_iter_, km.inertia_, f"adaptinf_fast KMeans[{backend}] (k-means++ on a subsample)")


@pytest.mark.parametrize("d,k", CASES, ids=lambda v: str(v))
def test_sklearn_kmeans(benchmark, data, d, k):
    if CUDA:
        pytest.skip("CPU baseline")
    from sklearn.cluster import KMeans

    km = _once(benchmark, lambda: KMeans(k, n_init=1, max_iter=ITERS, tol=0.0, random_state=0).fit(data[d]))
    _row(benchmark, d, k, km.n_iter_, km.inertia_, "scikit-learn KMeans (lloyd)")


@pytest.mark.parametrize("d,k", CASES, ids=lambda v: str(v))
def test_sklearn_minibatch(benchmark, data, d, k):
    if CUDA:
        pytest.skip("CPU baseline")
    from sklearn.cluster import MiniBatchKMeans

    km = _once(benchmark, lambda: MiniBatchKMeans(k, n_init=1, max_iter=ITERS, batch_size=4096, random_state=0).fit(data[d]))
    _row(benchmark, d, k, km.n_iter_, km.inertia_, "scikit-learn MiniBatchKMeans (batch 4096; iterations are epochs)")


@pytest.mark.parametrize("equal_iters", [False, True], ids=["20-iters", "our-iters"])
@pytest.mark.parametrize("d,k", CASES, ids=lambda v: str(v))
def test_faiss(benchmark, data, d, k, equal_iters):
    """faiss always runs ``niter`` iterations; ours stops once no label changes. The "our-iters" rows
    give faiss the iteration count our fit ended with, so whole-fit times compare at equal iterations."""
    if importlib.util.find_spec("faiss") is None:
        pytest.skip("faiss not installed")
    import faiss

    x = data[d]
    niter = ITERS
    if equal_iters:
        niter = af.KMeans(k, max_iter=ITERS, tol=0.0, seed=0).fit(torch.from_numpy(x).to(DEVICE)).n_iter_
    km = faiss.Kmeans(d, k, niter=niter, seed=1, max_points_per_centroid=10**9, gpu=CUDA)
    _once(benchmark, lambda: km.train(x))
    dist, _ = km.index.search(x, 1)
    how = "our iteration count" if equal_iters else f"{ITERS} iterations"
    _row(benchmark, d, k, niter, float(dist.sum()), f"faiss Kmeans (random init), {how}")


@pytest.mark.parametrize("d,k", CASES, ids=lambda v: str(v))
def test_torch_gemm_argmin_iteration(benchmark, data, d, k):
    """One assignment by a plain dense GEMM + argmin that writes the N×K matrix (GPU reference point)."""
    if not CUDA:
        pytest.skip("GPU reference point")
    x = torch.from_numpy(data[d]).to(DEVICE, torch.bfloat16)
    c = x[:k].clone()
    _once(benchmark, lambda: (x @ c.T).argmax(1))
    _row(benchmark, d, k, 1, float("nan"), "torch bf16 GEMM + argmax (writes N×K)")
