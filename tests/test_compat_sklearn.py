"""adaptinf_fast.compat.sklearn is a scikit-learn estimator: scikit-learn's own estimator checks pass
(one listed failure, the one scikit-learn lists for its own KMeans), and clone, pipelines, grid
searches, float64, sample weights and scores behave as scikit-learn's; the release's calls keep
their quality."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import cluster as skc
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from adaptinf_fast.compat.sklearn import KMeans, MiniBatchKMeans

# scikit-learn's own KMeans and MiniBatchKMeans list this check as an expected failure too
# (sklearn/utils/_test_common/instance_generator.py): k-means++ and the relative tolerance see the
# repeated points, so a weighted fit and a fit on repeated rows draw different seeds.
EXPECTED = {"check_sample_weight_equivalence_on_dense_data":
            "sample_weight is not equivalent to removing/repeating samples (as for scikit-learn's KMeans)"}


@parametrize_with_checks([KMeans(n_clusters=3, n_init=2, max_iter=5),
                          MiniBatchKMeans(n_clusters=3, n_init=2, max_iter=5, batch_size=10)],
                         expected_failed_checks=lambda est: EXPECTED)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_release_style_call_on_numpy():
    x = load_digits().data.astype(np.float32)
    km = MiniBatchKMeans(n_clusters=10, batch_size=256, random_state=0, n_init=3, max_iter=100)
    labels = km.fit_predict(x)
    assert isinstance(labels, np.ndarray) and labels.shape == (len(x),) and km.cluster_centers_.shape == (10, 64)
    assert np.array_equal(km.predict(x), labels)
    sk = skc.MiniBatchKMeans(n_clusters=10, batch_size=256, random_state=0, n_init=3, max_iter=100).fit(x)
    assert km.inertia_ <= sk.inertia_ * 1.01  # full-batch Lloyd is at least as good as mini-batches
    assert KMeans(10, random_state=0, n_init=3).fit(x).inertia_ <= skc.KMeans(10, random_state=0, n_init=3).fit(x).inertia_ * 1.01


def test_clone_params_pipeline_and_grid_search():
    x, _ = make_blobs(300, centers=3, n_features=4, random_state=0)
    km = KMeans(n_clusters=3, random_state=1, metric="l2")
    other = clone(km)
    assert other is not km and other.get_params() == km.get_params()
    assert km.set_params(n_clusters=4).n_clusters == 4 and "batch_size" in MiniBatchKMeans().get_params()
    pipe = make_pipeline(StandardScaler(), KMeans(3, random_state=0)).fit(x)
    assert pipe.predict(x).shape == (300,) and pipe.transform(x).shape == (300, 3)
    search = GridSearchCV(KMeans(random_state=0), {"n_clusters": [2, 3, 5]}, cv=2).fit(x)
    assert search.best_params_["n_clusters"] == 5  # the score (−inertia) rises with K


def test_dtypes_scores_weights_and_unfitted():
    x, _ = make_blobs(200, centers=3, n_features=5, random_state=2)
    km = KMeans(3, random_state=0).fit(x)
    assert km.cluster_centers_.dtype == np.float64 and km.transform(x).dtype == np.float64
    assert km.labels_.dtype == np.int32 and km.n_features_in_ == 5
    assert KMeans(3, random_state=0).fit(x.astype(np.float32)).cluster_centers_.dtype == np.float32
    assert km.score(x) == pytest.approx(-km.inertia_, rel=1e-4)
    assert np.allclose(km.fit_transform(x), km.transform(x))
    w = np.ones(200)
    w[:100] = 0  # the first half weighs nothing
    weighted = KMeans(3, random_state=0).fit(x, sample_weight=w)
    half = KMeans(3, init=weighted.cluster_centers_, max_iter=1).fit(x[100:])
    np.testing.assert_allclose(np.sort(weighted.cluster_centers_, 0), np.sort(half.cluster_centers_, 0), rtol=1e-4)
    assert weighted.score(x, sample_weight=w) == pytest.approx(-weighted.inertia_, rel=1e-4)
    with pytest.raises(NotFittedError):
        KMeans(2).predict(x)
    with pytest.raises(ValueError, match="n_samples=1 should be >= n_clusters=2"):
        KMeans(2).fit(x[:1])
    with pytest.raises(ValueError, match="callable"):
        KMeans(2, init=lambda *a: None).fit(x)
    with pytest.raises(ValueError, match="Negative values in data passed to `sample_weight`"):
        KMeans(2).fit(x, sample_weight=-w)


def test_feature_names_out_and_pandas_output():
    pd = pytest.importorskip("pandas")
    x, _ = make_blobs(120, centers=3, n_features=4, random_state=0)
    km = KMeans(3, random_state=0).fit(x)
    assert list(km.get_feature_names_out()) == ["kmeans0", "kmeans1", "kmeans2"]
    out = make_pipeline(StandardScaler(), MiniBatchKMeans(3, random_state=0)).set_output(transform="pandas").fit_transform(x)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["minibatchkmeans0", "minibatchkmeans1", "minibatchkmeans2"]


def test_partial_fit_streams_to_the_running_means():
    x, y = make_blobs(600, centers=3, n_features=4, cluster_std=0.3, center_box=(-20, 20), random_state=3)
    km = MiniBatchKMeans(3, random_state=0)
    for chunk in np.array_split(np.arange(600), 5):
        km.partial_fit(x[chunk])
    assert km.n_steps_ == 5 and km.labels_.shape == (120,) and km.n_features_in_ == 4
    # separated blobs: every point goes to its blob's centre, so each centre is its blob's exact mean
    want = np.stack([x[y == c].mean(0) for c in range(3)])
    got = km.cluster_centers_[[np.argmin(((km.cluster_centers_ - w) ** 2).sum(1)) for w in want]]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(km.predict(x), km.predict(want)[y])
    with pytest.raises(ValueError, match="features"):
        km.partial_fit(x[:10, :3])
    w = np.where(np.arange(120) < 60, 2.0, 0.0)  # weights: a doubled half and an ignored half
    a = MiniBatchKMeans(3, init=want + 1).partial_fit(x[:120], sample_weight=w)
    b = MiniBatchKMeans(3, init=want + 1).partial_fit(x[:60])
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-6)
    assert a.inertia_ == pytest.approx(2 * b.inertia_, rel=1e-6)


def test_explicit_init_with_several_runs_warns_as_scikit_learn():
    x, _ = make_blobs(60, centers=2, n_features=3, random_state=0)
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        KMeans(2, init=x[:2], n_init=3).fit(x)
