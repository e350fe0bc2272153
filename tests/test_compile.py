"""The public ops under torch.compile (custom ops with fake implementations: no graph break) and
inputs from any DLPack array (no copy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adaptinf_fast as af


def test_project_compiles_without_a_graph_break():
    x = torch.randn(5, 300)

    def featurize(g):
        return torch.nn.functional.normalize(af.project(g * 2.0, 64, seed=2**64 - 5), dim=1)

    compiled = torch.compile(featurize, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), featurize(x))


def test_project_with_out_compiles():
    x = torch.randn(3, 100)

    def two_pieces(g):
        acc = af.project(g[:, :60], 32, seed=7)
        return af.project(g[:, 60:], 32, seed=7, row_offset=60, out=acc)

    got = torch.compile(two_pieces, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, af.project(x, 32, seed=7), rtol=1e-5, atol=1e-5)


def test_kmeans_assign_and_max_similarity_compile():
    x, c = torch.randn(40, 8), torch.randn(5, 8)
    labels = torch.randint(0, 3, (40,))

    def f(x, c, labels):
        lab, d = af.kmeans_assign(x, c, metric="cosine")
        m, idx = af.cluster_max_similarity(x, labels)
        return lab, d.sum(), m.clamp_min(-1).sum(), idx

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, c, labels)
    want = f(x, c, labels)
    assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])


def test_custom_ops_pass_torch_library_checks():
    x = torch.randn(4, 50)
    torch.library.opcheck(torch.ops.adaptinf.project.default, (x, 16, 3, "rademacher", 0, "raise", "torch"))
    torch.library.opcheck(torch.ops.adaptinf.kmeans_assign.default, (x, torch.randn(3, 50), "l2", "raise", "torch"))
    torch.library.opcheck(torch.ops.adaptinf.cluster_max_similarity.default,
                          (x, torch.tensor([0, 1, 0, 1]), None, True, "raise", "torch"))


class DLPackOnly:
    """An array that offers nothing but the DLPack protocol (as CuPy or JAX arrays do)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_dlpack_arrays_are_accepted_without_a_copy():
    from adaptinf_fast._validate import as_tensor

    a = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)
    t = as_tensor(DLPackOnly(a), "x")
    assert t.data_ptr() == a.ctypes.data  # shared, not copied
    torch.testing.assert_close(af.project(DLPackOnly(a), 16, seed=1), af.project(torch.from_numpy(a), 16, seed=1))
    lab, _ = af.kmeans_assign(DLPackOnly(a), DLPackOnly(a[:3].copy()))
    assert lab.tolist()[:3] == [0, 1, 2]
    with pytest.raises(TypeError, match="x must be"):
        af.project(object(), 4)
