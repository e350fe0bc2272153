"""adaptinf_fast.compat.semdedup reproduces SemDeDup's full-matrix per-cluster step."""

from __future__ import annotations

import pytest
import torch

from adaptinf_fast.compat.semdedup import points_to_remove, semdedup


def semdedup_full_matrix(reps: torch.Tensor) -> torch.Tensor:
    """SemDeDup's rule written out: full matrix, zero diagonal, strict upper triangle, column max."""
    s = reps.double() @ reps.double().T
    s.fill_diagonal_(0.0)
    return torch.triu(s, diagonal=1).max(dim=0).values


def test_matches_the_full_matrix_rule(rng):
    reps = torch.randn(300, 32, generator=rng)
    reps[150:200] = reps[:50] + 1e-3 * torch.randn(50, 32, generator=rng)  # near duplicates
    reps[250:260] = reps[20]  # exact duplicates
    reps = torch.nn.functional.normalize(reps, dim=1)
    m = semdedup(list(range(300)), reps, "cpu")
    torch.testing.assert_close(m.double(), semdedup_full_matrix(reps), rtol=0, atol=2e-6)
    flags = points_to_remove(reps, [0.001, 0.01, 0.1])
    want = semdedup_full_matrix(reps)
    for eps in (0.001, 0.01, 0.1):
        assert torch.equal(flags[f"eps={eps}"], want > 1 - eps)
    assert flags["eps=0.001"].sum() >= 60 and m[0] == 0


def test_length_mismatch():
    with pytest.raises(ValueError, match="cluster has 3 entries"):
        semdedup([1, 2, 3], torch.randn(4, 2))
