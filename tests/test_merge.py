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
        merge_lora([a], 2.0, "copa")
    with pytest.raises(ValueError, match="other LoRA layers"):
        merge_lora([a, adapter(rng, layers=((12, 10),))], 2.0)
    with pytest.raises(ValueError, match="no LoRA weights"):
        merge_lora([{"w": torch.zeros(2)}], 2.0)
