"""cluster_max_similarity / semdedup / prune_to_budget (DESIGN §4.3) against an explicit n×n brute force."""

from __future__ import annotations

import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast.ops.dedup import reference as ref


def clustered(rng, n=300, d=24, k=7, dup_frac=0.2, noncontiguous=True):
    """Clustered rows with planted exact and near duplicates; label values need not be 0..K-1."""
    centers = torch.randn(k, d, generator=rng) * 3
    labels = torch.randint(0, k, (n,), generator=rng)
    x = centers[labels] + torch.randn(n, d, generator=rng)
    n_dup = int(n * dup_frac)
    src = torch.randint(0, n, (n_dup,), generator=rng)
    dst = torch.randperm(n, generator=rng)[:n_dup]
    keep_src = ~torch.isin(src, dst)
    src, dst = src[keep_src], dst[keep_src]
    x[dst] = x[src] + torch.randn(len(src), d, generator=rng) * torch.where(
        torch.rand(len(src), 1, generator=rng) < 0.5, 0.0, 1e-3)  # half exact, half near
    labels[dst] = labels[src]
    if noncontiguous:
        labels = labels * 17 + 5
    return x, labels


def brute_force(x, labels, order):
    """True maxima from full n×n float64 matrices, one per cluster."""
    n = x.shape[0]
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    sims = xn @ xn.T
    earlier = (labels[:, None] == labels[None, :]) & (rank[:, None] < rank[None, :])  # [i, j]: i before j
    masked = torch.where(earlier, sims, torch.tensor(float("-inf"), dtype=torch.float64))
    return masked.max(0).values, sims, earlier


def check_against_brute_force(x, labels, order, m, idx):
    want, sims, earlier = brute_force(x, labels, order)
    none = torch.isinf(want)
    assert torch.equal(torch.isinf(m), none) and (idx[none] == -1).all()
    torch.testing.assert_close(m[~none].double(), want[~none], rtol=0, atol=2e-6)
    j = (~none).nonzero().flatten()
    i = idx[j]
    assert earlier[i, j].all(), "argmax must be an earlier sample of the same cluster"
    torch.testing.assert_close(sims[i, j], want[j], rtol=0, atol=2e-6)  # tie-tolerant


def test_matches_brute_force_with_planted_duplicates(rng, device):
    x, labels = clustered(rng)
    m, idx = af.cluster_max_similarity(x.to(device), labels.to(device))
    check_against_brute_force(x, labels, torch.arange(len(x)), m.cpu(), idx.cpu())


def test_arbitrary_order_and_tiling(rng, monkeypatch):
    monkeypatch.setattr(ref, "ROW_TILE", 16)
    monkeypatch.setattr(ref, "COL_CHUNK", 23)
    x, labels = clustered(rng, n=400, k=3)
    order = torch.randperm(len(x), generator=rng)
    m, idx = af.cluster_max_similarity(x, labels, order=order)
    check_against_brute_force(x, labels, order, m, idx)


def test_singletons_one_giant_cluster_and_ties(rng, monkeypatch):
    monkeypatch.setattr(ref, "ROW_TILE", 32)
    x = torch.randn(150, 8, generator=rng)
    x[100:] = x[0]  # 50 exact copies of row 0: every one ties with all earlier copies
    labels = torch.zeros(150, dtype=torch.long)
    labels[:10] = torch.arange(10) + 1000  # ten singletons
    m, idx = af.cluster_max_similarity(x, labels)
    check_against_brute_force(x, labels, torch.arange(150), m, idx)
    assert torch.isinf(m[:10]).all() and (idx[:10] == -1).all()
    assert (idx[101:] == 100).all(), "exact ties go to the earliest sample in order"


def test_first_sample_of_a_cluster_may_be_the_only_one_and_m_can_be_negative():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    m, idx = af.cluster_max_similarity(x, torch.tensor([0, 0, 1]))
    assert m[0] == float("-inf") and m[1] == pytest.approx(-1.0) and idx.tolist() == [-1, 0, -1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_rows_are_normalised_in_fp32(dtype, rng):
    x, labels = clustered(rng, n=120)
    xl = x.to(dtype) * 3  # not unit norm
    m, idx = af.cluster_max_similarity(xl, labels)
    check_against_brute_force(xl.float(), labels, torch.arange(120), m, idx)


@pytest.mark.parametrize("eps", [0.01, 0.1, 0.5])
def test_semdedup_equals_triu_column_max_rule(eps, rng):
    """SemDeDup: sort each cluster by the rule, triu(S, 1), column max, drop where > 1 - eps."""
    x, labels = clustered(rng, n=250, dup_frac=0.3)
    keep = af.semdedup(x, labels, eps=eps, order="hard")
    order = af.semdedup_order(x, labels, "hard")
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    want = torch.ones(len(x), dtype=torch.bool)
    for lab in labels.unique():
        srt = order[labels[order] == lab]  # the cluster in the order semdedup used
        c = torch.nn.functional.normalize(xn[srt].mean(0), dim=0)
        dist = 1 - xn[srt] @ c
        assert (dist[1:] <= dist[:-1] + 1e-6).all(), "hard order: farthest from the centroid first"
        s = torch.triu(xn[srt] @ xn[srt].T, diagonal=1)
        want[srt] = ~(s.max(0).values > 1 - eps)
    assert torch.equal(keep, want)
    assert (~keep).sum() > 0  # the planted duplicates are found


def test_semdedup_many_eps_in_one_call_and_orders(rng):
    x, labels = clustered(rng)
    eps = [0.001, 0.05, 0.3]
    multi = af.semdedup(x, labels, eps=eps, order="easy")
    assert multi.shape == (3, len(x))
    for row, e in zip(multi, eps):
        assert torch.equal(row, af.semdedup(x, labels, eps=e, order="easy"))
    assert (multi[0].long() - multi[2].long() >= 0).all()  # larger eps drops a superset
    for mode in ("random", "index"):
        assert af.semdedup(x, labels, eps=0.05, order=mode).dtype == torch.bool
    assert torch.equal(af.semdedup_order(x, labels, "random", seed=3), af.semdedup_order(x, labels, "random", seed=3))


def test_semdedup_order_with_given_centroids(rng):
    x, labels = clustered(rng, n=60, k=3, noncontiguous=False)
    cents = torch.randn(3, x.shape[1], generator=rng)
    order = af.semdedup_order(x, labels, "hard", centroids=cents)
    cos = (torch.nn.functional.normalize(x, dim=1) * torch.nn.functional.normalize(cents, dim=1)[labels]).sum(1)
    assert (cos[order][1:] >= cos[order][:-1]).all()


def brute_prune(m, labels, shares_by_label, order):
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    keep = torch.zeros(len(m), dtype=torch.bool)
    for lab, share in shares_by_label.items():
        members = (labels == lab).nonzero().flatten().tolist()
        members.sort(key=lambda j: (m[j].item(), rank[j].item()))
        keep[members[:share]] = True
    return keep


def test_prune_to_budget_total_and_per_cluster(rng):
    x, labels = clustered(rng, n=200, k=5)
    order = torch.randperm(200, generator=rng)
    m, _ = af.cluster_max_similarity(x, labels, order=order)
    m = (m * 20).round() / 20  # coarse values: many ties, decided by order
    keep = af.prune_to_budget(m, labels, 120, order=order)
    uniq, counts = labels.unique(return_counts=True)
    shares = af.split_budget(counts, 120)
    assert int(keep.sum()) == 120
    assert torch.equal(keep, brute_prune(m, labels, dict(zip(uniq.tolist(), shares.tolist())), order))
    per = torch.zeros(int(labels.max()) + 1, dtype=torch.long)
    per[uniq] = torch.tensor([1, 0, 50, 3, 1000])[: len(uniq)]
    keep2 = af.prune_to_budget(m, labels, per, order=order)
    want = brute_prune(m, labels, {u: min(int(per[u]), int(c)) for u, c in zip(uniq.tolist(), counts.tolist())}, order)
    assert torch.equal(keep2, want)


@pytest.mark.parametrize(
    "call,err,msg",
    [
        (lambda: af.cluster_max_similarity(torch.randn(4, 2, 2), torch.zeros(4, dtype=torch.long)), ValueError, "3 dims"),
        (lambda: af.cluster_max_similarity(torch.randn(4, 2), torch.zeros(3, dtype=torch.long)), ValueError, "3 entries"),
        (lambda: af.cluster_max_similarity(torch.randn(4, 2), torch.zeros(4)), TypeError, "integer"),
        (lambda: af.cluster_max_similarity(torch.randn(4, 2), torch.tensor([0, 1, -1, 0])), ValueError, ">= 0"),
        (lambda: af.cluster_max_similarity(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), order=torch.tensor([0, 0, 1])), ValueError, "permutation"),
        (lambda: af.semdedup(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), eps=0.0), ValueError, "outside"),
        (lambda: af.semdedup(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), eps=2.0), ValueError, "outside"),
        (lambda: af.semdedup(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), eps=[0.1, 3]), ValueError, "outside"),
        (lambda: af.semdedup(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), eps=0.1, order="hardest"), ValueError, "order"),
        (lambda: af.semdedup(torch.randn(3, 2), torch.tensor([0, 4, 4]), eps=0.1, centroids=torch.randn(2, 2)), ValueError, "labels go up to 4"),
        (lambda: af.prune_to_budget(torch.tensor([0.1, float("nan")]), torch.tensor([0, 0]), 1), ValueError, "NaN"),
        (lambda: af.prune_to_budget(torch.tensor([0.1, 0.2]), torch.tensor([0, 3]), [1, 1]), ValueError, "labels go up to 3"),
        (lambda: af.prune_to_budget(torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), -1), ValueError, "total"),
    ],
)
def test_bad_input(call, err, msg):
    with pytest.raises(err, match=msg):
        call()


def test_nan_rows_raise():
    x = torch.randn(5, 3)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        af.semdedup(x, torch.zeros(5, dtype=torch.long), eps=0.1, order="index")


def test_empty_input():
    m, idx = af.cluster_max_similarity(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert m.shape == (0,) and idx.shape == (0,)
