"""Every k-means assignment kernel against the reference, tie-tolerant, odd sizes, exact ties."""

from __future__ import annotations

import pytest
import torch

import adaptinf_fast as af
from conftest import kernel_cases
from test_kmeans import brute_assign as brute

CASES = kernel_cases("kmeans_assign")
CASES = [c for c in CASES if c.values[0] != "faiss"]
pytestmark = pytest.mark.skipif(not CASES, reason="no k-means kernel can run here")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (70, 13, 33), (130, 300, 5), (17, 3, 129)], ids=lambda v: str(v))
def test_assign_matches_brute_force(backend, device, metric, n, k, d, rng):
    x = torch.randn(n, d, generator=rng)
    c = torch.randn(k, d, generator=rng)
    labels, value = af.kmeans_assign(x.to(device), c.to(device), metric=metric, backend=backend)
    scores, best = brute(x, c, metric)
    got = scores.gather(1, labels.cpu().unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, best, rtol=1e-5, atol=1e-4)  # a different index only if as good
    torch.testing.assert_close(value.cpu().double(), best, rtol=1e-4, atol=1e-4)
    ref_labels, ref_value = af.kmeans_assign(x, c, metric=metric, backend="torch")
    torch.testing.assert_close(value.cpu(), ref_value, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", CASES)
def test_exact_ties_go_to_the_lowest_index(backend, device, rng):
    c = torch.randn(90, 8, generator=rng)
    c[70] = c[5]  # across tiles
    c[6] = c[5]  # inside a tile
    x = c[5:6].repeat(4, 1) + 0.0
    labels, _ = af.kmeans_assign(x.to(device), c.to(device), backend=backend)
    assert labels.cpu().tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fit_with_kernel_equals_reference_fit(backend, device, dtype, rng):
    x = (torch.randn(300, 10, generator=rng) + torch.randint(0, 4, (300, 1), generator=rng) * 3).to(dtype)
    a = af.KMeans(4, seed=2, backend=backend).fit(x.to(device))
    b = af.KMeans(4, seed=2, backend="torch").fit(x)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-4)
