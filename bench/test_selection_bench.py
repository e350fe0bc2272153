"""One selection round end to end on synthetic features read from disk (fp16 .npy), with per-step
times: load → cluster (spherical k-means, n_init=1) → selector per cluster → budget + CCS →
max-similarity + prune to a pool budget. CPU: N=100k, D=8192, K=10. GPU: N=250k (4 GB of fp16 on disk,
8 GB of float32 in GPU memory: a call of the GPU check writes, loads and selects inside its time limit)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast.selection.policy import prune_mask, select_subset
from conftest import CUDA, sync

N = 250_000 if CUDA else 100_000
D, SKILLS = 8192, 40


@pytest.fixture(scope="module")
def features_on_disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("sel") / "features.npy"
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(N, D))
    centers = rng.standard_normal((SKILLS, D)).astype(np.float32)
    for r0 in range(0, N, 10_000):
        n = min(10_000, N - r0)
        x = centers[rng.integers(0, SKILLS, n)] + 1.5 * rng.standard_normal((n, D), dtype=np.float32)
        x[::10] = x[1::10][: len(x[::10])]  # near-duplicates
        out[r0 : r0 + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return path


@pytest.mark.parametrize("k", [10])
def test_selection_round(benchmark, features_on_disk, k):
    times: dict[str, float] = {}
    device = "cuda" if CUDA else "cpu"

    def step(name, fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times[name] = round(time.perf_counter() - t, 3)
        return out

    def round_():
        x = step("load", lambda: torch.from_numpy(np.array(np.load(features_on_disk, mmap_mode="r"))).to(device))
        g = torch.Generator().manual_seed(0)
        scores = {n: torch.from_numpy(np.random.default_rng(i).gamma(2.0, size=N)) for i, n in enumerate(["ppl", "el2n", "entropy", "grand"])}
        km = step("cluster", lambda: af.KMeans(k, metric="cosine", seed=0, max_iter=30).fit(x))
        labels = km.labels_
        step("select (selector + budget + CCS)", lambda: select_subset(x, labels.cpu(), scores, method="adaptinf",
                                                                       budget=N // 10, generator=g))
        step("prune (max similarity + budget)", lambda: prune_mask(x, labels, mode="budget", pool_budget=N * 8 // 10))

    benchmark.pedantic(round_, rounds=1, iterations=1)
    benchmark.extra_info.update(device=device, n=N, d=D, k=k, step_seconds=dict(times), total_seconds=round(sum(times.values()), 3))
