"""Backend registry and per-call dispatch (DESIGN §3).

Each op maps backend names to the module that implements it. Choice per call:
``backend=`` argument > ``ADAPTINF_BACKEND`` environment variable > the fastest available backend
that accepts the inputs (CPU tensors: ``torch``; CUDA tensors: ``triton`` > ``cuda`` > ``torch``).
Nothing here touches a GPU or imports Triton at import time: availability is probed lazily.

Test switches, both for CPU-only machines: ``TRITON_INTERPRET=1`` runs Triton kernels on CPU
tensors; ``ADAPTINF_CUDA_EMULATE=1`` runs the CUDA kernels' source on CPU tensors through the host
emulator ``adaptinf_fast._cuda_emu`` (built beside ``_C``). Both only for explicit ``backend=``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from types import ModuleType

import torch

log = logging.getLogger("adaptinf_fast")

BACKENDS = ("torch", "triton", "cuda", "faiss")  # faiss: k-means assignment only, never chosen by "auto"
# Triton first: its kernels are the ones timed so far; the CUDA (WMMA) kernels are picked by "auto"
# only where Triton is missing, until GPU benchmarks say otherwise.
_GPU_PREFERENCE = ("triton", "cuda", "torch")

# op -> backend -> module path. A backend is listed only once it is implemented.
_REGISTRY: dict[str, dict[str, str]] = {
    "project": {"torch": "adaptinf_fast.ops.projection.reference", "triton": "adaptinf_fast.ops.projection.triton",
                "cuda": "adaptinf_fast.ops.projection.cuda"},
    "kmeans_assign": {"torch": "adaptinf_fast.ops.kmeans.reference", "triton": "adaptinf_fast.ops.kmeans.triton",
                      "cuda": "adaptinf_fast.ops.kmeans.cuda", "faiss": "adaptinf_fast.ops.kmeans.faiss_backend"},
    "cluster_max_similarity": {"torch": "adaptinf_fast.ops.dedup.reference", "triton": "adaptinf_fast.ops.dedup.triton",
                               "cuda": "adaptinf_fast.ops.dedup.cuda"},
}

_INSTALL_HINT = {
    "triton": "install triton (`pip install triton`) and run on a CUDA GPU, or set TRITON_INTERPRET=1 to "
    "run Triton kernels on CPU tensors (slow, for tests)",
    "faiss": "install faiss (`pip install adaptinf-fast[faiss]`, or faiss-gpu for CUDA tensors)",
    "cuda": "build adaptinf_fast._C with a CUDA compiler (`pip install --no-build-isolation -e .` with nvcc "
    "on PATH) and run on a CUDA GPU, or set ADAPTINF_CUDA_EMULATE=1 to run the CUDA kernels on CPU tensors "
    "through the host emulator (slow, for tests)",
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is not implemented for an op, or cannot run here."""


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cuda_emulating() -> bool:
    return os.environ.get("ADAPTINF_CUDA_EMULATE", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _import_extension(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"adaptinf_fast.{name}")
    except ImportError as exc:
        log.debug("adaptinf_fast.%s not importable: %s", name, exc)
        return None


def cuda_extension() -> ModuleType | None:
    """The compiled ``adaptinf_fast._C`` module, or None when it was not built."""
    return _import_extension("_C")


def cuda_kernels() -> ModuleType | None:
    """The module the CUDA backend launches through: ``_C``, or the host emulator ``_cuda_emu``
    under ``ADAPTINF_CUDA_EMULATE=1`` (same launchers and kernel source, CPU tensors)."""
    return _import_extension("_cuda_emu" if cuda_emulating() else "_C")


def _why_unusable(backend: str, device: torch.device) -> str | None:
    """Reason why `backend` cannot take tensors on `device`, or None when it can."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not _triton_installed():
            return "triton is not installed"
        if device.type == "cuda" or triton_interpreting():
            return None
        return "the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"
    if backend == "faiss":
        if importlib.util.find_spec("faiss") is None:
            return "faiss is not installed"
        if device.type == "cuda":
            import faiss

            if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
                return "this faiss build has no GPU support"
        return None
    if backend == "cuda":
        if cuda_emulating():
            if cuda_kernels() is None:
                return "ADAPTINF_CUDA_EMULATE is set but adaptinf_fast._cuda_emu was not built"
            if device.type == "cuda":
                return "ADAPTINF_CUDA_EMULATE is set: the emulated CUDA backend takes CPU tensors only"
            return None
        if cuda_extension() is None:
            return "adaptinf_fast._C was not built (no CUDA compiler at install time)"
        if device.type != "cuda":
            return "the CUDA backend needs CUDA tensors (or ADAPTINF_CUDA_EMULATE=1 for CPU tensors)"
        return None
    return f"unknown backend {backend!r}"


def implemented_backends(op: str) -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if b in _REGISTRY[op])


def available_backends(device: str | torch.device | None = None) -> dict[str, list[str]]:
    """Backends that are implemented and can run here, per op.

    Args:
        device: judge availability for tensors on this device. Default: ``"cuda"`` when a GPU is
            visible, else ``"cpu"`` (so on a CPU machine this lists what CPU tensors can use).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    return {op: [b for b in implemented_backends(op) if _why_unusable(b, dev) is None] for op in _REGISTRY}


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, ModuleType]:
    """Pick the backend for one call and import its module."""
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}")
    source = "backend="
    if backend == "auto":
        env = os.environ.get("ADAPTINF_BACKEND", "").strip()
        if env and env != "auto":
            backend, source = env, "ADAPTINF_BACKEND="
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"{source}{backend!r} is not a backend; expected 'auto' or one of {BACKENDS}")
        if backend not in _REGISTRY[op]:
            raise BackendUnavailableError(
                f"{source}{backend!r}: op {op!r} has no {backend} implementation in this version "
                f"(implemented: {', '.join(implemented_backends(op))})"
            )
        why = _why_unusable(backend, device)
        if why is not None:
            raise BackendUnavailableError(f"{source}{backend!r} for op {op!r}: {why}; {_INSTALL_HINT.get(backend, '')}")
        return backend, importlib.import_module(_REGISTRY[op][backend])
    # "auto": CPU tensors always go to torch (the interpreter is only for explicit requests).
    if device.type != "cuda":
        return "torch", importlib.import_module(_REGISTRY[op]["torch"])
    for name in _GPU_PREFERENCE:
        if name in _REGISTRY[op] and _why_unusable(name, device) is None:
            if name == "torch":
                log.debug("op %s: no GPU kernel available for %s tensors; using the torch backend", op, device)
            return name, importlib.import_module(_REGISTRY[op][name])
    raise AssertionError("the torch backend is always available")
