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
