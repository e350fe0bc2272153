"""split_budget (DESIGN §4.6) against hand-computed cases and its invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from adaptinf_fast import split_budget


@pytest.mark.parametrize(
    "sizes,total,want",
    [
        ([10, 10, 10], 9, [3, 3, 3]),
        ([10, 10, 10], 10, [4, 3, 3]),  # remainder to the largest; ties -> lower index
        ([1, 100, 50], 30, [1, 15, 14]),  # 1 taken whole, 29 over two: 15 to the larger
        ([2, 3, 100], 60, [2, 3, 55]),  # redistribution repeats until stable
        ([5, 0, 5], 100, [5, 0, 5]),  # budget larger than the pool: everything
        ([4, 7], 0, [0, 0]),
        ([3, 9, 9], 10, [3, 4, 3]),
    ],
)
def test_hand_computed(sizes, total, want):
    assert split_budget(sizes, total).tolist() == want


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=12), total=st.integers(0, 400))
def test_invariants(sizes, total):
    s = torch.tensor(sizes)
    shares = split_budget(s, total)
    assert int(shares.sum()) == min(total, sum(sizes))
    assert (shares >= 0).all() and (shares <= s).all()
    # fairness: a cluster below its size never has 2+ fewer than any other cluster's share
    partial = shares < s
    if partial.any():
        assert shares.max() - shares[partial].min() <= 1


def test_bad_input():
    with pytest.raises(ValueError, match=">= 0"):
        split_budget([3, -1], 2)
    with pytest.raises(ValueError, match="total"):
        split_budget([3, 1], -2)
