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

import fnmatch
import functools
import importlib
import importlib.util
import logging
import os
from types import ModuleType

import torch

log = logging.getLogger("adaptinf_fast")

BACKENDS = ("torch", "triton", "cuda", "faiss")  # faiss: k-means assignment only, never chosen by "auto"
# Without a measurement, Triton first (its kernels meet the static issue-bound targets); the CUDA
# kernels are picked by "auto" only where Triton is missing or a measurement says so.
_GPU_PREFERENCE = ("triton", "cuda", "torch")
# "auto" on CUDA tensors by measurement: (op, shape class, device-name glob) -> the backend that was
# fastest for that class in a committed GPU bench run (bench/results/<suite>-<device>.json). Filled
# from those files by hand when they exist; empty now: no GPU has timed the kernels yet.
MEASURED: dict[tuple[str, str, str], tuple[str, str]] = {}  # -> (backend, the result file it comes from)
SHAPE_CLASSES = ("small", "large")  # small: under 2**28 multiply-adds in the call


def shape_class(work: int | None) -> str:
    return "small" if work is not None and work < 1 << 28 else "large"

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
    "on PATH), or install CuPy (`pip install adaptinf-fast[cuda13]`: the kernels compile at first use through "
    "NVRTC), and run on a CUDA GPU, or set ADAPTINF_CUDA_EMULATE=1 to run the CUDA kernels on CPU tensors "
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


def cuda_jit_forced() -> bool:
    return os.environ.get("ADAPTINF_CUDA_JIT", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def cuda_jit() -> ModuleType | None:
    """``ops.jit`` (the kernel sources through CuPy's NVRTC) when CuPy is installed, else None."""
    if importlib.util.find_spec("cupy") is None:
        return None
    return importlib.import_module("adaptinf_fast.ops.jit")


def cuda_kernels() -> ModuleType | None:
    """The module the CUDA backend launches through: ``_C``; the CuPy/NVRTC JIT (``ops.jit``) where
    ``_C`` was not built or ``ADAPTINF_CUDA_JIT=1``; or the host emulator ``_cuda_emu`` under
    ``ADAPTINF_CUDA_EMULATE=1`` (same launchers and kernel source, CPU tensors)."""
    if cuda_emulating():
        return _import_extension("_cuda_emu")
    ext = cuda_extension()
    return ext if ext is not None and not cuda_jit_forced() else cuda_jit()


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
        if cuda_kernels() is None:
            if cuda_jit_forced():
                return "ADAPTINF_CUDA_JIT is set but CuPy is not installed"
            return "adaptinf_fast._C was not built (no CUDA compiler at install time) and CuPy is not installed"
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


def resolve(op: str, backend: str, device: torch.device, work: int | None = None) -> tuple[str, ModuleType]:
    """Pick the backend for one call and import its module (``work``: the call's multiply-adds,
    for the shape class of a measured choice)."""
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
    name, why = auto_choice(op, device, work=work)
    log.debug("op %s on %s: %s (%s)", op, device, name, why)
    return name, importlib.import_module(_REGISTRY[op][name])


def auto_choice(op: str, device: torch.device, *, work: int | None = None, device_name: str | None = None
                ) -> tuple[str, str]:
    """The backend ``"auto"`` takes for ``op`` on ``device`` and why: CPU tensors go to torch (the
    Triton interpreter and the CUDA emulator are for explicit requests); CUDA tensors go to the
    backend measured fastest for the call's shape class on this GPU model (``MEASURED``), else to
    Triton, else CUDA, else torch — the first that can run here."""
    if device.type != "cuda":
        return "torch", "CPU tensors: the torch reference (Triton/CUDA kernels need CUDA tensors)"
    cls = shape_class(work)
    if MEASURED and device_name is None:  # the name is asked only when there is a table to match
        device_name = torch.cuda.get_device_name(device)
    for (m_op, m_cls, pattern), (name, source) in MEASURED.items():
        if m_op == op and m_cls == cls and fnmatch.fnmatch(device_name, pattern) and _why_unusable(name, device) is None:
            return name, f"measured fastest for {cls} calls on {pattern} ({source})"
    skipped = []
    for name in _GPU_PREFERENCE:
        if name in _REGISTRY[op]:
            why = _why_unusable(name, device)
            if why is None:
                note = f"; not usable: {'; '.join(skipped)}" if skipped else ""
                return name, f"no measurement for {cls} calls on {device_name or device}: default order triton > cuda > torch{note}"
            skipped.append(f"{name} ({why})")
    raise AssertionError("the torch backend is always available")
