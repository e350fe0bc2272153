"""Static performance check of every kernel, without a GPU (DESIGN §6).

For a set of named shapes (production, bench and test shapes) the package's own launchers are
called on shape-only tensors; the Triton launches they make are compiled ahead of time for sm_90
(and sm_80), and the CUDA kernels are compiled by nvcc. For each kernel the report gives
registers, spills, shared memory, blocks per SM, the SASS instruction mix of the main loop, its
issue bound (tensor-core cycles / max(tensor-core cycles, issued instructions) per iteration; see
``bench/static/sass.py`` for the model and what it leaves out) and its shared-memory bound
(tensor-core cycles / max(tensor-core cycles, shared-memory wavefronts of 128 bytes); see
``bench/static/smem.py``). A kernel's bound is the smaller of the two; the report names which binds.

    python bench/static_check.py [--arch 90 80] [--only projection kmeans dedup featurizer cuda]
                                 [--json bench/results/static-sm90.json]

Exit status 1 when a kernel fails to compile, a production-shape launch spills registers, a
production shape's main loop misses its target on sm_90 (``bench/static/cases.py``) on either
bound, or a pipelined CUDA kernel (``kernels/pipe.cuh``) spills or misses its target on either bound
on the architecture it runs on (``bench/static/cuda.py``: projection 0.70, k-means and max-sim
0.60; warp-specialised issue model in ``sass.warp_specialised``, shared-memory traffic from the
emulator's bank profile in ``smem.pipe_stage``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels (the interpreter replaces them)

import torch  # noqa: E402

from bench.static import cuda as cuda_report  # noqa: E402
from bench.static import sass
from bench.static import smem as shared_model  # noqa: E402
from bench.static.cases import CASES, Case  # noqa: E402
from bench.static.compile import compile_launch  # noqa: E402
from bench.static.record import recording  # noqa: E402


def _launch_rows(case: Case, arch: int) -> list[dict]:
    with recording(arch, sm_count=132 if arch >= 90 else 108) as rec:
        case.run()
    rows = []
    seen = set()
    for launch in rec.launches:
        const = {k: (str(v) if not isinstance(v, (int, float, str, bool)) else v) for k, v in launch.kwargs.items()}
        key = (launch.name, json.dumps(const, sort_keys=True))
        if key in seen:  # the same compiled kernel launched again (e.g. per tile of a loop)
            continue
        seen.add(key)
        row = {"case": case.name, "op": case.op, "category": case.category, "kernel": launch.name, "arch": f"sm_{arch}",
               "config": const, "grid": list(launch.grid), "target_issue_bound": case.target if arch == 90 else None}
        try:
            t0 = time.perf_counter()
            compiled = compile_launch(launch, arch)
            row["compile_seconds"] = round(time.perf_counter() - t0, 2)
        except Exception as exc:  # noqa: BLE001 - reported, and fails the check
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            rows.append(row)
            continue
        text, res = sass.dump(compiled.cubin)
        funcs = sass.parse(text)
        name, instrs = next(iter(funcs.items()))
        usage = sass.resources(res).get(name, {})
        local_ops = sum(1 for i in instrs if i.opcode.startswith(("LDL", "STL")))
        threads = compiled.num_warps * 32
        smem = compiled.shared + usage.get("SHARED", 0)
        row.update(regs=usage.get("REG"), stack_bytes=usage.get("STACK", 0), spill_instructions=local_ops,
                   smem_bytes=smem, threads=threads, blocks_per_sm=sass.occupancy(usage.get("REG", 0), smem, threads, arch))
        inner, outer = sass.main_loop(instrs, arch)
        if inner is None:
            row["main_loop"] = None
        else:
            useful = case.useful_flops(launch)
            row["main_loop"] = sass.summary(sass.report_loop(inner, arch), useful, compiled.num_warps, arch)
            row["main_loop"].update(shared_model.from_sass(inner.own(), arch))
            shared_model.bounded(row["main_loop"])
            trips = case.inner_trips(launch) if case.inner_trips else None
            if trips and outer is not None:
                row["per_outer_iteration"] = dict(
                    sass.summary(sass.amortised(inner, outer, trips, arch), useful * trips, compiled.num_warps, arch),
                    inner_trips=trips)
        rows.append(row)
    return rows


def check_target(name: str, row: dict, target: float | None, failures: list[str]) -> None:
    loop = row.get("main_loop") or {}
    if target is None or "error" in row:
        return
    for which in ("issue", "shared"):
        value = loop.get(f"{which}_bound", 0.0)
        if value < target:
            failures.append(f"{name}: {which} bound {value:.2f} is below its target {target:.2f}")


def spills(row: dict) -> bool:
    """Triton keeps no local arrays, so any stack frame is spilled registers; nvcc reports spills."""
    if "spill_bytes" in row:
        return bool(row["spill_bytes"])
    return bool(row.get("stack_bytes") or row.get("spill_instructions"))


def _fmt(row: dict) -> str:
    if "error" in row:
        return f"{row.get('case', row.get('source', '?')):38s} {row['arch']:7s} COMPILE ERROR {row['error'][:120]}"
    loop = row.get("main_loop") or {}
    outer = row.get("per_outer_iteration")
    mix = loop.get("mix", {})
    cfg = row.get("config", {})
    tile = "x".join(str(cfg[k]) for k in ("BLOCK_B", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_P", "BLOCK_D") if k in cfg)
    tile += f" w{cfg['num_warps']} s{cfg.get('num_stages', '-')}" if "num_warps" in cfg else ""
    name = row.get("case") or "cuda " + row.get("kernel", "")
    amort = f"{outer['issue_bound']:.2f}/{outer['bf16_peak_bound']:.2f}" if outer else "   -     "
    return (f"{name[:38]:38s} {row['arch']:7s} {tile[:22]:22s} {row.get('regs') or 0:4d} "
            f"{'SPILL' if spills(row) else '   - '} {row.get('smem_bytes', 0) // 1024:4d}K {row.get('blocks_per_sm', 0):2d} "
            f"{loop.get('instructions', 0):6d} {loop.get('tensor_cycles', 0):7.0f} {loop.get('issue_bound', 0):5.2f} "
            f"{loop.get('wavefronts', 0):6.0f} {loop.get('shared_bound', 0):5.2f} {loop.get('binds', '-')[:5]:5s} "
            f"{loop.get('bf16_peak_bound', 0):5.2f} {loop.get('serial_bound', 0):5.2f}  {amort:9s} "
            f"int {mix.get('integer', 0)} shr {mix.get('shared', 0)} cp {mix.get('async copy', 0)} "
            f"gl {mix.get('global', 0)} fl {mix.get('float', 0)} mma {mix.get('tensor', 0)}")


HEADER = (f"{'case / kernel':38s} {'arch':7s} {'tile':22s} {'regs':>4s} spill {'smem':>5s} {'bl':>2s} "
          f"{'instr':>6s} {'tensor':>7s} {'issue':>5s} {'wavef':>6s} {'shard':>5s} {'binds':5s} {'bf16':>5s} "
          f"{'serial':>5s}  outer b/bf16")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", type=int, default=[90, 80])
    ap.add_argument("--only", nargs="+", default=None, help="ops: projection kmeans dedup featurizer cuda")
    ap.add_argument("--category", nargs="+", default=None, help="production bench test")
    ap.add_argument("--json", default=None, help="output file (one --arch only); default: static-sm<ARCH>.json in --json-dir")
    ap.add_argument("--json-dir", default=str(ROOT / "bench" / "results"), help="default: bench/results")
    args = ap.parse_args(argv)
    failures = []
    for arch in args.arch:
        rows = []
        print(f"\n== sm_{arch}: Triton launches made by the package's launchers ({len(CASES)} named shapes)")
        print(HEADER)
        for case in CASES:
            if args.only and case.op not in args.only:
                continue
            if args.category and case.category not in args.category:
                continue
            for row in _launch_rows(case, arch):
                print(_fmt(row), flush=True)
                rows.append(row)
                if "error" in row:
                    failures.append(f"{row['case']} sm_{arch}: does not compile: {row['error'][:200]}")
                elif spills(row) and row["category"] == "production":
                    failures.append(f"{row['case']} sm_{arch}: spills ({row['stack_bytes']} B stack) in a production shape")
                check_target(f"{row['case']} sm_{arch}", row, row.get("target_issue_bound"), failures)
        cuda_rows = []
        if not args.only or "cuda" in args.only:
            cuda_arch = "90a" if arch == 90 else str(arch)
            print(f"\n== sm_{cuda_arch}: CUDA kernels (nvcc -Xptxas -v, cuobjdump -sass)")
            try:
                cuda_rows = cuda_report.report(cuda_arch)
            except FileNotFoundError as exc:
                print(f"skipped: {exc}")
            except RuntimeError as exc:
                failures.append(str(exc)[:500])
                print(exc)
            for row in cuda_rows:
                print(_fmt(row))
                name = f"cuda {row['kernel']} {row['arch']}"
                target = row.get("target_issue_bound")
                check_target(name, row, target, failures)
                failures += [f"{name}: {problem}" for problem in row.get("structure_problems", [])]
                if target is not None and spills(row):
                    failures.append(f"{name}: spills ({row.get('spill_bytes')} B)")
        out = Path(args.json) if args.json and len(args.arch) == 1 else Path(args.json_dir) / f"static-sm{arch}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"arch": f"sm_{arch}", "triton": _version("triton"), "torch": torch.__version__,
                "nvcc": _nvcc_version(), "commit": _commit(),
                "model": "issue bound = tensor-core cycles / max(tensor-core cycles, issued instructions) per "
                         "main-loop iteration and warp (bench/static/sass.py); shared bound = tensor-core cycles / "
                         "max(tensor-core cycles, 128-byte shared-memory wavefronts) per iteration or pipeline stage "
                         "(bench/static/smem.py); a kernel's bound is the smaller"}
        out.write_text(json.dumps({"meta": meta, "triton": rows, "cuda": cuda_rows}, indent=1) + "\n")
        print(f"written: {out}")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except ImportError:
        return "not installed"


def _nvcc_version() -> str | None:
    import subprocess

    exe = cuda_report.nvcc()
    if not exe:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return out[-1] if out else None


def _commit() -> str | None:
    import subprocess

    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
