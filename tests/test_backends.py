"""Backend registry and dispatch (DESIGN §3)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast import backends


def test_available_backends_lists_every_op_with_torch():
    avail = af.available_backends("cpu")
    assert set(avail) == {"project", "kmeans_assign", "cluster_max_similarity"}
    assert all("torch" in v for v in avail.values())
    if backends.triton_interpreting():  # conftest sets TRITON_INTERPRET=1 when there is no GPU
        assert all("triton" in v for v in avail.values())
    # CUDA kernels take CPU tensors only through the host emulator (conftest sets it without a GPU)
    assert all(("cuda" in v) == backends.cuda_emulating() for v in avail.values())
    assert "faiss" not in avail["project"]


def test_auto_sends_cpu_tensors_to_torch_even_when_interpreting(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.resolve("project", "auto", torch.device("cpu"))[0] == "torch"


def test_explicit_missing_backend_is_an_error_naming_what_exists():
    with pytest.raises(af.BackendUnavailableError, match="no faiss implementation.*implemented: torch, triton, cuda"):
        af.project(torch.randn(2, 3), 4, backend="faiss")


def test_cuda_backend_on_cpu_tensors_names_the_emulator(monkeypatch):
    monkeypatch.delenv("ADAPTINF_CUDA_EMULATE", raising=False)
    with pytest.raises(af.BackendUnavailableError, match="ADAPTINF_CUDA_EMULATE=1"):
        af.kmeans_assign(torch.randn(3, 2), torch.randn(2, 2), backend="cuda")


def test_environment_variable_is_an_explicit_request(monkeypatch):
    monkeypatch.delenv("ADAPTINF_CUDA_EMULATE", raising=False)
    monkeypatch.setenv("ADAPTINF_BACKEND", "cuda")
    with pytest.raises(af.BackendUnavailableError, match="ADAPTINF_BACKEND='cuda'"):
        af.kmeans_assign(torch.randn(3, 2), torch.randn(2, 2))
    monkeypatch.setenv("ADAPTINF_BACKEND", "torch")
    assert af.kmeans_assign(torch.randn(3, 2), torch.randn(2, 2))[0].shape == (3,)
    # the argument wins over the environment
    monkeypatch.setenv("ADAPTINF_BACKEND", "triton")
    assert af.project(torch.randn(1, 3), 2, backend="torch").shape == (1, 2)


def test_unusable_backend_reason_names_the_fix(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY["project"], "triton", "adaptinf_fast.ops.projection.reference")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(af.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        af.project(torch.randn(1, 3), 2, backend="triton")


def test_import_queries_no_gpu_and_no_triton():
    code = (
        "import sys, torch\n"
        "torch.cuda.is_available = lambda: (_ for _ in ()).throw(RuntimeError('GPU queried'))\n"
        "import adaptinf_fast\n"
        "assert 'triton' not in sys.modules, 'triton imported at package import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_on_cuda_tensors_follows_a_measurement_then_the_default_order(monkeypatch):
    import torch

    from adaptinf_fast import backends

    gpu = torch.device("cuda", 0)
    usable = {"triton", "cuda", "torch"}
    monkeypatch.setattr(backends, "_why_unusable", lambda b, d: None if b in usable else "not here")
    name, why = backends.auto_choice("project", gpu, work=1 << 30, device_name="NVIDIA H200")
    assert name == "triton" and "no measurement" in why
    monkeypatch.setitem(backends.MEASURED, ("project", "large", "NVIDIA H*"), ("cuda", "projection-H200.json"))
    assert backends.auto_choice("project", gpu, work=1 << 30, device_name="NVIDIA H200")[0] == "cuda"
    assert backends.auto_choice("project", gpu, work=1 << 10, device_name="NVIDIA H200")[0] == "triton"  # small calls
    assert backends.auto_choice("project", gpu, work=1 << 30, device_name="NVIDIA A100")[0] == "triton"
    usable.discard("cuda")  # a measured backend that cannot run here is passed over
    assert backends.auto_choice("project", gpu, work=1 << 30, device_name="NVIDIA H200")[0] == "triton"
    usable.discard("triton")
    name, why = backends.auto_choice("project", gpu, device_name="NVIDIA H200")
    assert name == "torch" and "triton (not here)" in why
    assert backends.auto_choice("project", torch.device("cpu"))[0] == "torch"
