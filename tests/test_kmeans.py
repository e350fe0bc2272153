"""KMeans / kmeans_assign (DESIGN §4.2) against brute force and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_digits, make_blobs

import adaptinf_fast as af


def brute_assign(x, c, metric):
    x, c = x.double(), c.double()
    if metric == "cosine":
        s = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(c, dim=1).T
        return s, s.max(1).values
    d = torch.cdist(x, c).pow(2)
    return d, d.min(1).values


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,k,d", [(1, 1, 3), (97, 13, 33), (500, 1, 7), (300, 300, 5)])
def test_assign_matches_brute_force_tie_tolerant(metric, n, k, d, rng, device):
    x = torch.randn(n, d, generator=rng)
    c = torch.randn(k, d, generator=rng)
    c[k // 2] = c[0]  # duplicate centroid: an exact tie that must go to the lower index
    labels, value = af.kmeans_assign(x.to(device), c.to(device), metric=metric)
    assert labels.dtype == torch.int64 and value.dtype == torch.float32
    scores, best = brute_assign(x, c, metric)
    got = scores.gather(1, labels.cpu().unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, best, rtol=1e-5, atol=1e-4)  # chosen index is (near-)optimal
    torch.testing.assert_close(value.cpu().double(), best, rtol=1e-4, atol=1e-4)
    if k > 1:
        assert not (labels == k // 2).any(), "ties must go to the lowest centroid index"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_assign_low_precision_input(dtype, rng):
    x = torch.randn(200, 16, generator=rng).to(dtype)
    c = torch.randn(8, 16, generator=rng)
    labels, _ = af.kmeans_assign(x, c)
    scores, best = brute_assign(x.float(), c, "l2")
    torch.testing.assert_close(scores.gather(1, labels.unsqueeze(1)).squeeze(1), best, rtol=1e-5, atol=1e-4)


def _within_1pct_of_sklearn(x, k, n_init):
    ours = af.KMeans(k, n_init=n_init, seed=0).fit(x)
    sk = SkKMeans(k, n_init=n_init, random_state=0).fit(x)
    assert ours.inertia_ <= sk.inertia_ * 1.01, (ours.inertia_, sk.inertia_)
    # inertia_ is what the labels and centres say it is
    d = ((x - ours.cluster_centers_[ours.labels_]) ** 2).sum()
    assert ours.inertia_ == pytest.approx(float(d), rel=1e-4)


@pytest.mark.parametrize("k", [10, 20])
def test_inertia_within_1pct_of_sklearn_on_blobs(k):
    x, _ = make_blobs(n_samples=4000, n_features=12, centers=10, cluster_std=2.0, random_state=1)
    _within_1pct_of_sklearn(x.astype(np.float32), k, n_init=3)


@pytest.mark.parametrize("k", [10, 30])
def test_inertia_within_1pct_of_sklearn_on_digits(k):
    _within_1pct_of_sklearn(load_digits().data.astype(np.float32), k, n_init=3)


def test_numpy_in_numpy_out_and_predict():
    x, _ = make_blobs(300, 4, centers=3, random_state=0)
    km = af.KMeans(3, seed=1).fit(x.astype(np.float32))
    assert isinstance(km.labels_, np.ndarray) and km.cluster_centers_.shape == (3, 4)
    assert np.array_equal(km.predict(x.astype(np.float32)), km.labels_)
    assert km.n_iter_ >= 1


def test_same_seed_same_result_and_n_init_keeps_best():
    x = torch.from_numpy(load_digits().data.astype(np.float32))
    a, b = af.KMeans(12, seed=4).fit(x), af.KMeans(12, seed=4).fit(x)
    assert torch.equal(a.labels_, b.labels_) and a.inertia_ == b.inertia_
    singles = [af.KMeans(12, seed=s).fit(x).inertia_ for s in range(3)]
    best = af.KMeans(12, seed=0, n_init=5).fit(x).inertia_
    assert best <= min(singles[:1]) + 1e-3


def test_cosine_is_spherical(rng):
    x = torch.randn(400, 8, generator=rng) * torch.rand(400, 1, generator=rng) * 5
    km = af.KMeans(6, metric="cosine", seed=0).fit(x)
    torch.testing.assert_close(km.cluster_centers_.norm(dim=1), torch.ones(6), rtol=1e-5, atol=1e-5)
    xn = torch.nn.functional.normalize(x, dim=1)
    d = (xn - km.cluster_centers_[km.labels_]).pow(2).sum()
    assert km.inertia_ == pytest.approx(float(d), rel=1e-4)
    # every point sits with its most similar centre
    assert torch.equal(km.labels_, (xn @ km.cluster_centers_.T).argmax(1))


def test_edge_sizes(rng):
    one = af.KMeans(1, seed=0).fit(torch.randn(1, 4, generator=rng))
    assert one.labels_.tolist() == [0] and one.inertia_ == pytest.approx(0.0, abs=1e-5)
    x = torch.randn(25, 3, generator=rng)
    kn = af.KMeans(25, seed=0).fit(x)
    assert kn.inertia_ == pytest.approx(0.0, abs=1e-4) and sorted(kn.labels_.tolist()) == list(range(25))
    k1 = af.KMeans(1).fit(x)
    torch.testing.assert_close(k1.cluster_centers_[0], x.mean(0), rtol=1e-5, atol=1e-6)


def test_duplicates_and_identical_points(rng):
    base = torch.randn(5, 6, generator=rng)
    x = base.repeat(40, 1)  # 5 distinct points, each 40 times
    km = af.KMeans(5, seed=0).fit(x)
    # zero up to float32 rounding of ‖x‖² − 2x·c + ‖c‖² on each of the 200 points
    assert km.inertia_ == pytest.approx(0.0, abs=1e-5 * float(x.pow(2).sum()))
    with pytest.warns(RuntimeWarning, match="distinct clusters"):
        same = af.KMeans(3, seed=0).fit(torch.ones(10, 2))
    assert same.inertia_ == 0 and torch.isfinite(same.cluster_centers_).all()


def test_empty_cluster_is_reseeded_by_splitting_the_largest():
    x = torch.cat([torch.randn(50, 2) * 0.1, torch.randn(50, 2) * 0.1 + 10])
    init = torch.tensor([[0.0, 0.0], [100.0, 100.0], [10.0, 10.0]])  # centre 1 attracts nothing
    km = af.KMeans(3, init=init, max_iter=50).fit(x)
    assert torch.bincount(km.labels_, minlength=3).min() > 0
    assert torch.isfinite(km.cluster_centers_).all()


def test_init_array_and_random_init(rng):
    x = torch.randn(200, 3, generator=rng)
    init = x[:4].clone()
    a = af.KMeans(4, init=init, max_iter=1).fit(x)
    manual = torch.stack([x[torch.cdist(x, init).argmin(1) == j].mean(0) for j in range(4)])
    torch.testing.assert_close(a.cluster_centers_, manual, rtol=1e-5, atol=1e-5)
    assert af.KMeans(4, init="random", seed=3).fit(x).inertia_ > 0


@pytest.mark.parametrize(
    "call,err,msg",
    [
        (lambda: af.KMeans(5).fit(torch.randn(3, 2)), ValueError, "larger than the number of samples"),
        (lambda: af.KMeans(0), ValueError, "n_clusters"),
        (lambda: af.KMeans(2, metric="manhattan"), ValueError, "metric"),
        (lambda: af.KMeans(2, init="kmeans||"), ValueError, "init"),
        (lambda: af.KMeans(2, tol=-1), ValueError, "tol"),
        (lambda: af.KMeans(2).fit(torch.randn(5)), ValueError, "1 dims"),
        (lambda: af.KMeans(2).fit(torch.ones(5, 2, dtype=torch.int32)), TypeError, "dtype"),
        (lambda: af.KMeans(2, init=torch.zeros(3, 2)).fit(torch.randn(5, 2)), ValueError, "init has shape"),
        (lambda: af.KMeans(2).predict(torch.randn(5, 2)), RuntimeError, "not fitted"),
        (lambda: af.kmeans_assign(torch.randn(5, 2), torch.randn(3, 4)), ValueError, "D=4"),
        (lambda: af.kmeans_assign(torch.randn(5, 2), torch.zeros(0, 2)), ValueError, "empty"),
    ],
)
def test_bad_input(call, err, msg):
    with pytest.raises(err, match=msg):
        call()


def test_nan_input_is_a_clear_error_or_zeroed():
    x = torch.randn(10, 3)
    x[4, 1] = float("nan")
    with pytest.raises(ValueError, match="1 row"):
        af.KMeans(2).fit(x)
    with pytest.warns(RuntimeWarning, match="zeroed 1 row"):
        km = af.KMeans(2, nonfinite="zero").fit(x)
    assert torch.isfinite(km.cluster_centers_).all()


def test_elbow_table_and_plot(tmp_path):
    x, _ = make_blobs(600, 5, centers=4, random_state=0)
    rows = af.elbow(x.astype(np.float32), [1, 2, 4, 8], metric="l2", progress=False)
    assert [r["k"] for r in rows] == [1, 2, 4, 8]
    inertia = [r["inertia"] for r in rows]
    assert inertia[0] == pytest.approx(float(((x - x.mean(0)) ** 2).sum()), rel=1e-4)
    assert inertia[0] > inertia[1] > inertia[2] > inertia[3]
    assert inertia[1] / inertia[2] > 3 * inertia[2] / inertia[3]  # the elbow at the true K=4
    from adaptinf_fast.ops.kmeans import format_elbow, plot_elbow

    assert "inertia" in format_elbow(rows) and plot_elbow(rows, tmp_path / "e.png").stat().st_size > 1000


def test_faiss_backend_assignment_and_fit(rng):
    pytest.importorskip("faiss")  # in the test extra
    x = torch.randn(500, 12, generator=rng)
    c = torch.randn(9, 12, generator=rng)
    for metric in ("l2", "cosine"):
        labels, value = af.kmeans_assign(x, c, metric=metric, backend="faiss")
        scores, best = brute_assign(x, c, metric)
        torch.testing.assert_close(scores.gather(1, labels.unsqueeze(1)).squeeze(1), best, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(value.double(), best, rtol=1e-4, atol=1e-4)
    data = load_digits().data.astype(np.float32)
    ours, via_faiss = af.KMeans(10, seed=0).fit(data), af.KMeans(10, seed=0, backend="faiss").fit(data)
    assert via_faiss.inertia_ == pytest.approx(ours.inertia_, rel=1e-3)


# ---- sample weights --------------------------------------------------------------------------

def test_integer_weights_equal_repeated_samples(rng):
    from adaptinf_fast.ops.kmeans import KMeans as Core

    x = torch.randn(60, 4, generator=rng)
    w = torch.randint(0, 4, (60,), generator=rng)
    w[0] = 2
    init = x[:3].clone()
    weighted = Core(3, init=init, max_iter=50, tol=0).fit(x, sample_weight=w.float())
    repeated = Core(3, init=init, max_iter=50, tol=0).fit(x.repeat_interleave(w, dim=0))
    torch.testing.assert_close(weighted.cluster_centers_, repeated.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-5)


def test_weighted_seeding_never_picks_a_weightless_point(rng):
    from adaptinf_fast.ops.kmeans import KMeans as Core

    x = torch.randn(40, 3, generator=rng)
    x[:20] += 50.0  # far away, but weightless
    w = torch.ones(40)
    w[:20] = 0
    for init in ("k-means++", "random"):
        km = Core(4, init=init, seed=3).fit(x, sample_weight=w)
        assert (km.cluster_centers_.norm(dim=1) < 20).all(), init  # no centre among the far points
        assert np.isfinite(km.inertia_)


def test_bad_sample_weights_are_refused():
    from adaptinf_fast.ops.kmeans import KMeans as Core

    x = torch.randn(10, 2)
    for w, msg in ((torch.ones(9), "9 values for 10"), (-torch.ones(10), "non-negative"),
                   (torch.zeros(10), "0 everywhere"), (torch.full((10,), float("nan")), "finite")):
        with pytest.raises(ValueError, match=msg):
            Core(2).fit(x, sample_weight=w)
