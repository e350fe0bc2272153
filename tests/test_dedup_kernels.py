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
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_semdedup_near_the_threshold_equals_fp32_decisions(backend, device, dtype, rng):
    x, labels = near_threshold_pairs(rng, 120, 48, cos=0.95, spread=0.01)
    x = x.to(dtype)
    eps = [0.05, 0.3]
    want = af.semdedup(x.float(), labels, eps=eps, order="index", backend="torch")  # fp32 arithmetic, same values
    assert 0 < int((~want[0]).sum()) < 120  # the threshold cuts through the pairs
    got = af.semdedup(x.to(device), labels.to(device), eps=eps, order="index", backend=backend).cpu()
    assert torch.equal(got, want)


def near_tied_predecessors(rng, n_groups: int, d: int, gap: float):
    """Clusters of 3 rows (a, b, j): cos(j, a) and cos(j, b) differ by about ``gap`` (random sign),
    far below fp16's resolution but far above fp32's."""
    j = torch.nn.functional.normalize(torch.randn(n_groups, d, generator=rng), dim=1)
    u, v = (torch.randn(n_groups, d, generator=rng) for _ in range(2))
    u = torch.nn.functional.normalize(u - (u * j).sum(1, keepdim=True) * j, dim=1)
    v = torch.nn.functional.normalize(v - (v * j).sum(1, keepdim=True) * j - (v * u).sum(1, keepdim=True) * u, dim=1)
    c = 0.9
    sign = torch.where(torch.rand(n_groups, 1, generator=rng) < 0.5, -1.0, 1.0)
    ca, cb = c + sign * gap / 2, c - sign * gap / 2
    a = ca * j + (1 - ca**2).sqrt() * u
    b = cb * j + (1 - cb**2).sqrt() * v
    x = torch.stack([a, b, j], 1).reshape(-1, d)  # a, b come before j in index order
    return x, torch.arange(n_groups).repeat_interleave(3)


@pytest.mark.parametrize("backend,device", [c for c in CASES if c.values[0] in ("triton", "cuda")])
def test_screen_rechecks_near_ties_and_equals_fp32(backend, device, rng, monkeypatch):
    from adaptinf_fast.ops.dedup import screened as tri

    x, labels = near_tied_predecessors(rng, 200, 64, gap=2e-5)
    m_want, i_want = af.cluster_max_similarity(x, labels, backend="torch")
    m_raw, i_raw = af.cluster_max_similarity(x.to(device), labels.to(device), exact=False, backend=backend)
    wrong = int((i_raw.cpu() != i_want).sum())
    assert wrong > 0, "fp16 screening alone cannot separate these ties (else the test shows nothing)"
    fin = torch.isfinite(m_want)
    assert (m_raw.cpu() - m_want)[fin].abs().max() > 1e-5  # screened values are fp16-accurate only
    redone = []
    real = tri.exact_rows
    monkeypatch.setattr(tri, "exact_rows", lambda xn, lab, order, rows: redone.append(len(rows)) or real(xn, lab, order, rows))
    m, i = af.cluster_max_similarity(x.to(device), labels.to(device), backend=backend)
    assert redone and redone[0] >= wrong  # at least every wrongly screened row was recomputed
    assert redone[0] <= 200  # ...and only the near-tied ones (the third row of each cluster)
    assert torch.equal(i.cpu(), i_want)
    assert torch.equal(torch.isfinite(m.cpu()), fin)
    # the winners' values are float32 dot products (another summation order than the reference's matmul)
    torch.testing.assert_close(m.cpu()[fin], m_want[fin], rtol=1e-6, atol=1e-7)


def test_screening_bound_holds_for_every_pair(rng):
    from adaptinf_fast.ops import screen

    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(300, 256, generator=rng) * torch.rand(300, 1, generator=rng) * 4
        y = torch.randn(200, 256, generator=rng)
        low_x, ex, nx = screen.rounding_error(x, dtype)
        low_y, ey, ny = screen.rounding_error(y, dtype)
        screened = low_x.float() @ low_y.float().T
        err = (screened - x @ y.T).abs()
        bound = screen.dot_bound(ex, nx, float(ey.max()), float(ny.max()), 256)
        assert (err <= bound[:, None]).all()
        assert err.max() > 0.05 * bound.max()  # not vacuous: within 20× of the worst case seen
