"""The ``adaptinf-fast`` command."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform
import sys
from pathlib import Path


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def info() -> int:
    import torch

    from . import __version__
    from .backends import _REGISTRY, available_backends, cuda_extension, implemented_backends, triton_interpreting

    print(f"adaptinf-fast {__version__}  (Python {platform.python_version()}, {platform.machine()})")
    print(f"torch         {torch.__version__}  (built with CUDA {torch.version.cuda or 'none'})")
    print(f"triton        {_version('triton')}{'  [TRITON_INTERPRET=1]' if triton_interpreting() else ''}")
    ext = cuda_extension()
    if ext is None:
        print("_C            not built (no CUDA compiler at install time): CUDA kernels unavailable")
    else:
        rt = ext.cuda_runtime_version()
        print(f"_C            built, CUDA runtime {rt // 1000}.{rt % 1000 // 10}, sees {ext.cuda_device_count()} device(s)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"device {i}      {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print("devices       no CUDA device visible to torch")
    cpu = available_backends("cpu")
    gpu = available_backends("cuda") if torch.cuda.is_available() else None
    print("\nop                      implemented           usable on CPU tensors   usable on CUDA tensors")
    for op in _REGISTRY:
        g = ", ".join(gpu[op]) if gpu is not None else "(no GPU)"
        print(f"{op:<23} {', '.join(implemented_backends(op)):<21} {', '.join(cpu[op]):<23} {g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaptinf-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="package, torch, triton, CUDA, _C and the backends per op")
    demo = sub.add_parser("demo", help="run the ops on built-in synthetic gradients (no network)")
    demo.add_argument("--out", type=Path, default=Path("adaptinf-demo"), help="output folder (summary.json)")
    demo.add_argument("--n", type=int, default=3000, help="unique samples")
    demo.add_argument("--duplicates", type=int, default=1000, help="planted near-duplicates")
    demo.add_argument("--in-dim", type=int, default=32768, help="length of each synthetic gradient")
    demo.add_argument("--out-dim", type=int, default=512, help="projection width")
    demo.add_argument("--clusters", type=int, default=8, help="pseudo-skills K")
    demo.add_argument("--eps", type=float, default=0.05, help="SemDeDup threshold eps")
    demo.add_argument("--budget", type=int, default=None, help="pool size after pruning (default 5/8 of the pool)")
    demo.add_argument("--seed", type=int, default=0)
    from .lifelong.cli import add_parsers, run as run_pool_command

    add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command != "demo":
        try:
            return run_pool_command(args)
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            print(f"adaptinf-fast {args.command}: error: {exc}", file=sys.stderr)
            return 2
    from .demo import DemoConfig, run

    budget = args.budget if args.budget is not None else (args.n + args.duplicates) * 5 // 8
    cfg = DemoConfig(n_unique=args.n, n_duplicates=args.duplicates, in_dim=args.in_dim, out_dim=args.out_dim,
                     n_skills=args.clusters, eps=args.eps, pool_budget=budget, seed=args.seed)
    run(cfg, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
