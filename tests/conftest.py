"""Shared fixtures.

* Kernel switches: with no CUDA device, ``TRITON_INTERPRET=1`` is set before anything imports
  Triton, so Triton kernels run on CPU tensors, and ``ADAPTINF_CUDA_EMULATE=1`` sends the CUDA
  backend to the host emulator ``_cuda_emu`` (same kernel source); both for explicit ``backend=``.
* ``rng``: a fresh random seed on every run (printed on failure) for property tests; comparisons
  with scikit-learn use their own fixed data and seeds.
* NaN fill (autouse): fresh float allocations from ``torch.empty``/``empty_like`` are filled with
  NaN, so code that forgets to write an element produces NaN and fails.
"""

from __future__ import annotations

import contextlib

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("ADAPTINF_CUDA_EMULATE", "1")

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the GPU machine)")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def rng(request) -> torch.Generator:
    # a fresh seed per run (printed; ADAPTINF_TEST_SEED=<seed> replays a failure)
    seed = int(os.environ.get("ADAPTINF_TEST_SEED") or random.SystemRandom().randrange(2**31))
    request.node.user_properties.append(("seed", seed))
    print(f"[rng seed {seed}]")
    return torch.Generator().manual_seed(seed)


_real_empty, _real_empty_like = torch.empty, torch.empty_like


def _nan_empty(*args, **kwargs):
    t = _real_empty(*args, **kwargs)
    if t.dtype.is_floating_point:
        t.fill_(float("nan"))
    return t


def _nan_empty_like(*args, **kwargs):
    t = _real_empty_like(*args, **kwargs)
    if t.dtype.is_floating_point:
        t.fill_(float("nan"))
    return t


@pytest.fixture(autouse=True)
def nan_fill(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_empty)
    monkeypatch.setattr(torch, "empty_like", _nan_empty_like)
    yield


def kernel_cases(op: str) -> list:
    """(backend, device) pairs of the kernels implemented for `op` that can run here: Triton and CUDA
    on CPU tensors under the interpreter and the emulator, on CUDA tensors when there is a GPU."""
    from adaptinf_fast.backends import _why_unusable, implemented_backends

    cases = []
    for backend in implemented_backends(op):
        if backend == "torch":
            continue
        for dev in DEVICES:
            if _why_unusable(backend, torch.device(dev)) is None:
                cases.append(pytest.param(backend, dev, id=f"{backend}-{dev}"))
    return cases


@contextlib.contextmanager
def lock_held_elsewhere(folder, what: str):
    """Another live process holds ``folder``'s FolderLock while the block runs."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from adaptinf_fast._io import FolderLock\n"
        f"with FolderLock({str(folder)!r}, {what!r}):\n    print('locked', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def write_stage_files(folder, data, names, images) -> list[dict]:
    """Write ``data[name]``'s train/test splits as LLaVA JSON under ``folder``; return the run
    config's stage entries (name, train, test, images) for ``names``."""
    import json
    from pathlib import Path

    folder = Path(folder)
    stages = []
    for name in names:
        for split in ("train", "test"):
            (folder / f"{name}-{split}.json").write_text(json.dumps(data[name][split]))
        stages.append({"name": name, "train": str(folder / f"{name}-train.json"),
                       "test": str(folder / f"{name}-test.json"), "images": str(images)})
    return stages
