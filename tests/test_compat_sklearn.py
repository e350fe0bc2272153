"""adaptinf_fast.compat.sklearn accepts the release's scikit-learn calls and matches its quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import cluster as skc
from sklearn.datasets import load_digits

from adaptinf_fast.compat.sklearn import KMeans, MiniBatchKMeans


def test_release_style_call_on_numpy():
    x = load_digits().data.astype(np.float32)
    km = MiniBatchKMeans(n_clusters=10, batch_size=256, random_state=0, n_init=3, max_iter=100)
    labels = km.fit_predict(x)
    assert isinstance(labels, np.ndarray) and labels.shape == (len(x),) and km.cluster_centers_.shape == (10, 64)
    assert np.array_equal(km.predict(x), labels)
    sk = skc.MiniBatchKMeans(n_clusters=10, batch_size=256, random_state=0, n_init=3, max_iter=100).fit(x)
    assert km.inertia_ <= sk.inertia_ * 1.01  # full-batch Lloyd is at least as good as mini-batches
    assert KMeans(10, random_state=0, n_init=3).fit(x).inertia_ <= skc.KMeans(10, random_state=0, n_init=3).fit(x).inertia_ * 1.01


def test_torch_input_transform_and_rejected_options():
    x = torch.randn(200, 5)
    km = KMeans(4, random_state=np.random.RandomState(1)).fit(x)
    assert isinstance(km.labels_, torch.Tensor)
    d = km.transform(x)
    assert d.shape == (200, 4) and torch.equal(d.argmin(1), km.labels_)
    with pytest.raises(ValueError, match="sample_weight"):
        KMeans(2).fit(x, sample_weight=np.ones(200))
    with pytest.raises(ValueError, match="callable"):
        KMeans(2, init=lambda *a: None)
