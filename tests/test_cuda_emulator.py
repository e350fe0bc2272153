"""The host emulator that runs the CUDA kernels' source on CPU (ADAPTINF_CUDA_EMULATE=1): it must
report broken kernels, run the Philox fill kernel bit for bit, and the launchers must refuse what
the kernels cannot take. (The kernels themselves are checked against the references in
test_*_kernels.py, through backend="cuda".)"""

from __future__ import annotations

import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast.backends import cuda_emulating, cuda_kernels, resolve
from adaptinf_fast.ops.projection import reference as ref

pytestmark = pytest.mark.skipif(not cuda_emulating() or cuda_kernels() is None,
                                reason="the CUDA emulator is used on machines without a GPU")


@pytest.mark.parametrize("name,msg", [("divergent_barrier", "different number of times"),
                                      ("misaligned_wmma", "not 32-byte aligned")])
def test_emulator_reports_broken_kernels(name, msg):
    with pytest.raises(RuntimeError, match=msg):
        cuda_kernels().selftest(name)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_philox_fill_kernel_matches_reference(kind):
    out = torch.empty(37, 300)
    cuda_kernels().philox_fill(out.data_ptr(), 37, 300, 2**40 + 5, 2**33, kind, 0.5, 0, 0)
    want = ref.matrix_rows(2**40 + 5, 2**33, 37, 300, kind) * 0.5
    if kind == "rademacher":
        assert torch.equal(out, want)
    else:
        torch.testing.assert_close(out, want, rtol=2e-6, atol=2e-6)


def test_launcher_refuses_a_grid_beyond_cuda_limits():
    x, ws = torch.zeros(1), torch.zeros(1)  # never touched: the grid is checked before any launch
    with pytest.raises(ValueError, match="beyond CUDA's limits"):
        cuda_kernels().project(x.data_ptr(), 0, ws.data_ptr(), 65536 * 64, 1, 1, 1, 0, 0, 1, "rademacher", 0, 0)


def test_batches_above_one_launch_are_split(monkeypatch, rng):
    from adaptinf_fast.ops.projection import cuda

    monkeypatch.setattr(cuda, "MAX_ROWS_PER_LAUNCH", 64)
    x = torch.randn(150, 70, generator=rng)
    out = torch.ones(150, 300)
    af.project(x, 300, seed=9, out=out, backend="cuda")
    torch.testing.assert_close(out - 1, af.project(x, 300, seed=9, backend="torch"), rtol=1e-5, atol=1e-5)


def test_launcher_refuses_null_pointers():
    with pytest.raises(ValueError, match="null pointer"):
        cuda_kernels().kmeans_assign(0, 0, 0, 0, 0, 0, 0, 5, 2, 3, False, 0, 0)


def test_auto_never_picks_the_emulator():
    assert resolve("project", "auto", torch.device("cpu"))[0] == "torch"
    assert resolve("kmeans_assign", "cuda", torch.device("cpu"))[0] == "cuda"  # only when asked for
