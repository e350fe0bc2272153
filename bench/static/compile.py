"""Compile a recorded Triton launch ahead of time for an NVIDIA architecture (no GPU needed).

The signature, constexprs and alignment attributes come from Triton's own JIT binder, so the
compiled kernel is the one the launch would run (same specialisation of integers divisible by 16,
same pointer alignment).
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from .record import Launch

_OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass
class Compiled:
    cubin: bytes
    shared: int  # dynamic shared memory bytes requested at launch
    num_warps: int
    name: str


_CACHE: dict[tuple, Compiled] = {}


def compile_launch(launch: Launch, arch: int) -> Compiled:
    """Compile (or take from this process's cache: one specialisation is compiled once)."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    opts = {k: getattr(options, k) for k in _OPTION_KEYS if getattr(options, k, None) is not None}
    key = (id(fn), arch, repr(sorted(signature.items())), repr(sorted(constexprs.items(), key=repr)),
           repr(sorted(attrs.items(), key=repr)), repr(sorted(opts.items())))
    if key not in _CACHE:
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=opts)
        _CACHE[key] = Compiled(kernel.asm["cubin"], kernel.metadata.shared, kernel.metadata.num_warps,
                               kernel.metadata.name)
    return _CACHE[key]
