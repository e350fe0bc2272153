"""Every max-similarity kernel against the n×n brute force: packed small clusters, a giant cluster,
exact ties, arbitrary order."""

from __future__ import annotations

import pytest
import torch

import adaptinf_fast as af
from conftest import kernel_cases
from test_dedup import check_against_brute_force, clustered

CASES = kernel_cases("cluster_max_similarity")
pytestmark = pytest.mark.skipif(not CASES, reason="no dedup kernel can run here")


@pytest.mark.parametrize("backend,device", CASES)
def test_planted_duplicates_and_arbitrary_order(backend, device, rng):
    x, labels = clustered(rng, n=230, k=6)
    order = torch.randperm(len(x), generator=rng)
    m, idx = af.cluster_max_similarity(x.to(device), labels.to(device), order=order.to(device), backend=backend)
    check_against_brute_force(x, labels, order, m.cpu(), idx.cpu())


@pytest.mark.parametrize("backend,device", CASES)
def test_many_small_clusters_packed_and_singletons(backend, device, rng):
    x = torch.randn(150, 20, generator=rng)
    labels = torch.arange(150) // 3  # 50 clusters of 3: several per row tile
    labels[::7] = 1000 + torch.arange(len(labels[::7]))  # singletons
    m, idx = af.cluster_max_similarity(x.to(device), labels.to(device), backend=backend)
    check_against_brute_force(x, labels, torch.arange(150), m.cpu(), idx.cpu())


@pytest.mark.parametrize("backend,device", CASES)
def test_one_cluster_exact_ties_go_first(backend, device, rng):
    x = torch.randn(200, 9, generator=rng)
    x[120:] = x[3]
    labels = torch.zeros(200, dtype=torch.long)
    m, idx = af.cluster_max_similarity(x.to(device), labels.to(device), backend=backend)
    check_against_brute_force(x, labels, torch.arange(200), m.cpu(), idx.cpu())
    assert (idx.cpu()[120:] == 3).all()


@pytest.mark.parametrize("backend,device", CASES)
def test_semdedup_decisions_equal_reference(backend, device, rng):
    x, labels = clustered(rng, n=180, dup_frac=0.3)
    for eps in (0.01, 0.2):
        a = af.semdedup(x.to(device), labels.to(device), eps=eps, backend=backend).cpu()
        assert torch.equal(a, af.semdedup(x, labels, eps=eps, backend="torch"))


def near_threshold_pairs(rng, n_pairs: int, d: int, cos: float, spread: float):
    """Pairs (b, y) in their own 2-sample clusters with cos(b, y) within ±spread of `cos`."""
    b = torch.nn.functional.normalize(torch.randn(n_pairs, d, generator=rng), dim=1)
    v = torch.randn(n_pairs, d, generator=rng)
    v = torch.nn.functional.normalize(v - (v * b).sum(1, keepdim=True) * b, dim=1)
    c = cos + (torch.rand(n_pairs, 1, generator=rng) * 2 - 1) * spread
    y = c * b + (1 - c * c).sqrt() * v
    return torch.cat([b, y]), torch.arange(n_pairs).repeat(2)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_screen_with_exact_recheck_equals_fp32_decisions(backend, device, dtype, rng, monkeypatch):
    from adaptinf_fast.ops import dedup

    x, labels = near_threshold_pairs(rng, 120, 48, cos=0.95, spread=0.01)
    x = x.to(dtype)
    eps = [0.05, 0.3]
    want = af.semdedup(x.float(), labels, eps=eps, order="index", backend="torch")  # fp32 arithmetic, same values
    assert 0 < int((~want[0]).sum()) < 120  # the threshold cuts through the pairs
    rechecked = []
    real = dedup._exact_rows
    monkeypatch.setattr(dedup, "_exact_rows", lambda xn, lab, order, rows: rechecked.append(len(rows)) or real(xn, lab, order, rows))
    got = af.semdedup(x.to(device), labels.to(device), eps=eps, order="index", backend=backend).cpu()
    assert rechecked and rechecked[0] > 0, "rows near 1 - eps must be recomputed in fp32"
    assert torch.equal(got, want)
    screened = af.semdedup(x.to(device), labels.to(device), eps=eps, order="index", exact=False, backend=backend).cpu()
    assert len(rechecked) == 1 and screened.shape == want.shape  # no recheck without exact


def test_screening_band_bounds_the_rounding_error(rng):
    from adaptinf_fast.ops.dedup import screening_band

    for dtype in (torch.float16, torch.bfloat16):
        x = torch.nn.functional.normalize(torch.randn(400, 256, generator=rng), dim=1)
        exact = x @ x.T
        low = x.to(dtype).float() @ x.to(dtype).float().T
        assert (low - exact).abs().max() <= screening_band(dtype, 256) / 2
