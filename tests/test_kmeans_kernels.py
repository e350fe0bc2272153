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


def near_tied_centroids(rng, n: int, d: int, gap: float):
    """Rows x with two centroids whose scores differ by about ``gap`` relative (random sign): below
    the 16-bit screening resolution, far above float32's. Plus 30 random far centroids."""
    x = torch.randn(n, d, generator=rng)
    u = torch.nn.functional.normalize(torch.randn(n, d, generator=rng), dim=1)
    c_far = torch.randn(30, d, generator=rng) * 3 + 10
    # one pair of centroids per row would need n centroids; use 4 shared pairs and rows near their bisectors
    base = torch.randn(4, d, generator=rng)
    delta = torch.nn.functional.normalize(torch.randn(4, d, generator=rng), dim=1)
    pair = torch.randint(0, 4, (n,), generator=rng)
    sign = torch.where(torch.rand(n, 1, generator=rng) < 0.5, -1.0, 1.0)
    # x = base + t·(u ⟂ delta) + s·delta: ‖x−(base+δ)‖² − ‖x−(base−δ)‖² = −4 s ‖δ‖², so s sets the gap
    u = u - (u * delta[pair]).sum(1, keepdim=True) * delta[pair]
    x = base[pair] + 2.0 * u + sign * gap * delta[pair]
    c = torch.cat([base + delta, base - delta, c_far])
    return x, c


SCREENING = [c for c in CASES if c.values[0] in ("triton", "cuda")]  # 16-bit screen, float32 decisions


@pytest.mark.parametrize("backend,device", SCREENING)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_screen_rechecks_near_ties_and_equals_fp32(backend, device, metric, rng, monkeypatch):
    import importlib

    from adaptinf_fast.ops.kmeans import screened

    tri = importlib.import_module(f"adaptinf_fast.ops.kmeans.{backend}")

    x, c = near_tied_centroids(rng, 400, 96, gap=3e-5)
    want_l, want_v = af.kmeans_assign(x, c, metric=metric, backend="torch")
    xp, cp = (torch.nn.functional.normalize(t, dim=1) for t in (x, c)) if metric == "cosine" else (x, c)
    cn = cp.pow(2).sum(1)
    raw, _, _ = tri.screened_assign(tri.screened_rows(xp.to(device), metric), cp.to(device), metric, cn.to(device))
    wrong = int((raw.cpu() != want_l).sum())
    assert wrong > 0, "16-bit screening alone cannot separate these ties (else the test shows nothing)"
    redone = []
    real = screened.reference.assign
    monkeypatch.setattr(screened.reference, "assign", lambda x_, *a, **k: redone.append(len(x_)) or real(x_, *a, **k))
    labels, value = af.kmeans_assign(x.to(device), c.to(device), metric=metric, backend=backend)
    assert redone and wrong <= redone[0] <= 400
    assert torch.equal(labels.cpu(), want_l)
    scale = float(xp.pow(2).sum(1).max() + cp.pow(2).sum(1).max())  # ‖x‖² − 2x·c + ‖c‖² cancels
    torch.testing.assert_close(value.cpu(), want_v, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("backend,device", SCREENING)
def test_lloyd_keeps_the_screened_rows_across_iterations(backend, device, rng, monkeypatch):
    import importlib

    tri = importlib.import_module(f"adaptinf_fast.ops.kmeans.{backend}")

    calls = []
    real = tri.screened_rows
    monkeypatch.setattr(tri, "screened_rows", lambda x_, m: calls.append(len(x_)) or real(x_, m))
    x = torch.randn(500, 8, generator=rng) + torch.randint(0, 3, (500, 1), generator=rng) * 4
    km = af.KMeans(3, seed=1, backend=backend, max_iter=6, tol=0).fit(x.to(device))
    assert km.n_iter_ > 1 and len(calls) == 1  # one screened copy of the (single-chunk) data
    ref = af.KMeans(3, seed=1, backend="torch", max_iter=6, tol=0).fit(x)
    assert torch.equal(km.labels_.cpu(), ref.labels_) and km.inertia_ == pytest.approx(ref.inertia_, rel=1e-6)
