"""Selector entropy (§4.5) and CCS sampling (§4.7) against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from adaptinf_fast.selection import ccs_bins, ccs_sample, choose_selectors, histogram_entropy


def test_entropy_hand_computed():
    # two equal halves: z = ±1 fall in bins 18 and 31 -> 1 bit
    assert histogram_entropy(torch.tensor([0.0, 0.0, 1.0, 1.0])) == pytest.approx(1.0)
    # mean 0.2, std 0.4: z = -0.5 (4×) in bin 21, z = 2 (1×) in bin 37 -> H(0.8, 0.2)
    h = -(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2))
    assert histogram_entropy(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])) == pytest.approx(h)
    assert histogram_entropy(torch.full((9,), 3.0)) == 0.0  # zero spread
    assert histogram_entropy(torch.tensor([1.0])) == 0.0
    # an outlier beyond z = 4 is counted in the edge bin, not dropped: 99 zeros and one huge value
    v = torch.cat([torch.zeros(99), torch.tensor([1e6])])
    h2 = -(0.99 * math.log2(0.99) + 0.01 * math.log2(0.01))
    assert histogram_entropy(v) == pytest.approx(h2)


def test_selector_choice_is_scale_invariant_and_ties_go_first(rng):
    labels = torch.tensor([0] * 200 + [5] * 200)
    wide = torch.randn(400, generator=rng)  # spread-out: high entropy
    peaky = torch.cat([torch.zeros(180), torch.randn(20, generator=rng)] * 2)  # mostly one bin
    assert choose_selectors({"wide": wide, "peaky": peaky}, labels) == {0: "wide", 5: "wide"}
    # the release binned raw values with the raw std, so rescaling a score changed the choice;
    # z-scoring first makes the choice independent of each score's scale
    for scale in (1e-4, 1e4):
        assert choose_selectors({"wide": wide * scale, "peaky": peaky / scale}, labels) == {0: "wide", 5: "wide"}
    assert choose_selectors({"a": wide, "b": wide * 3 + 1}, labels) == {0: "a", 5: "a"}  # tie -> first
    assert choose_selectors({"a": wide, "b": wide * 3 + 1}, labels, order=["b", "a"]) == {0: "b", 5: "b"}
    flat = torch.ones(400)
    assert choose_selectors({"flat": flat, "peaky": peaky}, labels) == {0: "peaky", 5: "peaky"}


def test_selector_errors():
    with pytest.raises(ValueError, match="100 values but there are 3"):
        choose_selectors({"a": torch.zeros(100)}, torch.zeros(3, dtype=torch.long))


def test_ccs_hand_computed_small_budget():
    values = torch.arange(100.0)  # 5th pct 4.95, 95th 94.05: trimmed = 5..94
    trimmed, idx, edges = ccs_bins(values)
    assert trimmed.sum() == 90 and not trimmed[:5].any() and not trimmed[95:].any()
    assert edges[0] == pytest.approx(4.95) and edges[-1] == pytest.approx(94.05)
    picked = ccs_sample(values, 10, torch.Generator().manual_seed(0))
    # ceil(10 / 50) = 1 per bin from the top: one sample from each of bins 49..40
    assert sorted(idx[picked].tolist()) == list(range(40, 50))


def test_ccs_large_budget_fills_from_tails_and_is_seeded():
    values = torch.arange(100.0)
    picked = ccs_sample(values, 95, torch.Generator().manual_seed(1))
    assert picked.numel() == 95 and picked.unique().numel() == 95
    trimmed, _, _ = ccs_bins(values)
    assert trimmed[picked].sum() == 90  # every trimmed sample, then 5 of the 10 tail samples
    again = ccs_sample(values, 95, torch.Generator().manual_seed(1))
    assert torch.equal(picked, again)


def test_ccs_invariants_on_skewed_scores(rng):
    values = torch.randn(1000, generator=rng).exp()  # log-normal: sparse upper bins
    for budget in (1, 37, 300, 899, 1000):
        picked = ccs_sample(values, budget, rng)
        assert picked.numel() == budget and picked.unique().numel() == budget
        if budget <= 900:
            trimmed, _, _ = ccs_bins(values)
            assert trimmed[picked].all(), "the trimmed set is used before the tails"
    assert ccs_sample(values, 0, rng).numel() == 0
