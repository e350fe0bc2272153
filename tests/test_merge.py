"""LoRA merging (ops/merge): identical adapters come back, order does not matter, the batched op
equals the per-layer reference, TIES trims / elects / takes the disjoint mean as defined."""

from __future__ import annotations

import pytest
import torch

from adaptinf_fast.ops.merge import delta_of, lora_pairs, merge_lora, reference


def adapter(rng, layers=((12, 10), (12, 10), (7, 5)), r=3, scale=2.0):
    out = {}
    for i, (o, n) in enumerate(layers):
        out[f"base.layers.{i}.q.lora_A.weight"] = torch.randn(r, n, generator=rng)
        out[f"base.layers.{i}.q.lora_B.weight"] = torch.randn(o, r, generator=rng)
    return out


def deltas(state, scale=2.0):
    return {p: delta_of(state, p, scale) for p in lora_pairs(state)}


@pytest.mark.parametrize("method", ["average", "ties"])
def test_identical_adapters_come_back(method, rng):
    a = adapter(rng)
    merged = merge_lora([a, a, a], 2.0, method, density=1.0)
    for p, d in deltas(a).items():
        torch.testing.assert_close(deltas(merged)[p], d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["average", "ties"])
def test_merging_is_invariant_to_adapter_order(method, rng):
    ads = [adapter(rng) for _ in range(3)]
    one = deltas(merge_lora(ads, 2.0, method, density=0.3))
    other = deltas(merge_lora(ads[::-1], 2.0, method, density=0.3))
    for p in one:
        torch.testing.assert_close(one[p], other[p], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["average", "ties"])
def test_batched_merge_equals_the_per_layer_reference(method, rng):
    ads = [adapter(rng) for _ in range(4)]
    merged = merge_lora(ads, 2.0, method, density=0.4, lam=0.8)
    pairs = lora_pairs(ads[0])
    layers = [[(a[bk], a[ak]) for a in ads] for bk, ak in pairs.values()]
    want = reference.merge_layers(layers, 2.0, method, rank=3, density=0.4, lam=0.8)
    for (b, a), p in zip(want, pairs):
        torch.testing.assert_close(delta_of(merged, p, 2.0), 2.0 * b @ a, rtol=1e-4, atol=1e-4)


def test_average_of_low_rank_updates_is_exact_when_it_fits_the_rank(rng):
    a = adapter(rng, r=4)
    b = {k: v.clone() for k, v in a.items()}
    for k in b:
        if ".lora_B." in k:
            b[k] = -0.5 * b[k]  # same subspace: the average has rank <= 4
    merged = merge_lora([a, b], 2.0, "average")
    for p in lora_pairs(a):
        torch.testing.assert_close(delta_of(merged, p, 2.0), 0.25 * delta_of(a, p, 2.0), rtol=1e-4, atol=1e-4)


def test_ties_by_hand():
    d = torch.tensor([[[3.0, -1.0, 0.5, 2.0]], [[-2.0, -4.0, 0.1, 1.0]], [[1.0, 1.0, -3.0, 0.2]]])
    got = reference.merged_delta(d, "ties", density=0.5)
    # keep the 2 largest |.| per task: [3, ., ., 2], [-2, -4, ., .], [., ., -3, 1]... (1 and 1 tie: both kept)
    # trimmed sums: 3-2+1=2 (+), -1-4+1=-4 (-), -3 (-), 2 (+)
    assert torch.allclose(got, torch.tensor([[2.0, -4.0, -3.0, 2.0]]))


def test_bad_inputs_are_refused(rng):
    a = adapter(rng)
    with pytest.raises(ValueError, match="expected one of"):
        merge_lora([a], 2.0, "fisher")
    with pytest.raises(ValueError, match="other LoRA layers"):
        merge_lora([a, adapter(rng, layers=((12, 10),))], 2.0)
    with pytest.raises(ValueError, match="no LoRA weights"):
        merge_lora([{"w": torch.zeros(2)}], 2.0)


# ---- CoPA-Merging (RobustMerge's official merge of A and B) ----------------------------------------

def test_copa_batched_equals_the_per_layer_reference(rng):
    ads = [adapter(rng, r=5) for _ in range(3)]
    merged = merge_lora(ads, 2.0, "copa", keep=0.3, clamp=0.4, lam=1.5)
    pairs = lora_pairs(ads[0])
    want = reference.merge_layers([[(a[bk], a[ak]) for a in ads] for bk, ak in pairs.values()], 2.0, "copa", rank=5,
                                  keep=0.3, clamp=0.4, lam=1.5)
    for (b, a), (bk, ak) in zip(want, pairs.values()):
        torch.testing.assert_close(merged[bk], b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(merged[ak], a, rtol=1e-5, atol=1e-6)
        assert merged[bk].shape == ads[0][bk].shape  # the tasks' rank: no SVD


def test_copa_prunes_by_a_kthvalue_threshold_per_matrix():
    w = torch.tensor([[0.1, -0.5, 0.3], [2.0, -0.05, 0.3]])
    # n = 6, keep 0.5: threshold = 3rd smallest |w| = 0.3; ties with it are kept
    assert torch.equal(reference.prune(w, 0.5), torch.tensor([[0.0, -0.5, 0.3], [2.0, 0.0, 0.3]]))
    assert torch.equal(reference.prune(w, 1.0), w)  # k = 0 -> the smallest: everything kept


def test_copa_coefficients_are_the_pruned_l1_mass_raised_to_a_quantile():
    a = torch.tensor([[1.0, 1.0, 2.0], [4.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    a_hat = torch.tensor([[0.0, 0.0, 2.0], [4.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # ratios 2, 1, 3 and 1 (an all-zero row: nothing removed); sorted 1, 1, 2, 3
    assert reference.coefficients(a, a_hat, clamp=0.5).tolist() == [2.0, 2.0, 3.0, 2.0]  # floor: sorted[2]
    assert reference.coefficients(a, a_hat, clamp=1.0).tolist() == [2.0, 1.0, 3.0, 1.0]  # floor: sorted[0]
    emptied = a_hat.clone()
    emptied[2] = 0  # pruning removed the whole row: the task's largest finite coefficient, not inf
    assert reference.coefficients(a, emptied, clamp=1.0).tolist() == [2.0, 1.0, 2.0, 1.0]


def test_copa_of_identical_adapters_is_the_pruned_adapter_scaled(rng):
    """T identical tasks: every coefficient is the same across tasks, so B* = lam B̂ and A* = lam T Â
    (the update lam² T times the pruned one): CoPA does not return an adapter merged with itself."""
    a = adapter(rng, r=4)
    merged = merge_lora([a, a, a], 2.0, "copa")
    for bk, ak in lora_pairs(a).values():
        torch.testing.assert_close(merged[bk], 2.0 * reference.prune(a[bk], 0.2))
        torch.testing.assert_close(merged[ak], 2.0 * 3 * reference.prune(a[ak], 0.2))


def test_copa_is_invariant_to_adapter_order_and_averages_other_weights(rng):
    ads = [adapter(rng) for _ in range(3)]
    for i, a in enumerate(ads):
        a["base.projector.weight"] = torch.full((2, 2), float(i))
    one, other = merge_lora(ads, 2.0, "copa"), merge_lora(ads[::-1], 2.0, "copa")
    for k in one:
        torch.testing.assert_close(one[k], other[k], rtol=1e-5, atol=1e-6)
    assert torch.equal(one["base.projector.weight"], torch.ones(2, 2))  # mean of 0, 1, 2
