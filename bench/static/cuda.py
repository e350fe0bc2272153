"""The CUDA kernels' static report: nvcc -Xptxas -v for registers/spills, cuobjdump -sass for loops."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import sass

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("project_launch.cu", "kmeans_launch.cu", "dedup_launch.cu")
# kernels/tile_mma.cuh: every kernel walks its reduction 32 deep per iteration on a 64 x 64 tile
USEFUL_FLOPS_PER_ITER = 2 * 64 * 64 * 32
THREADS = 128

_PTXAS_FN = re.compile(r"Compiling entry function '(\S+)' for '(\S+)'")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def nvcc() -> str | None:
    return shutil.which("nvcc")


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("cu++filt") or shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _ptxas_info(text: str) -> dict[str, dict[str, int]]:
    info: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = _PTXAS_FN.search(line)
        if m:
            current = info.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        if (u := _PTXAS_USED.search(line)):
            current["regs"] = int(u.group(1))
            if (s := _PTXAS_SMEM.search(line)):
                current["smem"] = int(s.group(1))
        if (s := _PTXAS_SPILL.search(line)):
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, s.groups())
    return info


def report(arch: str) -> list[dict]:
    """One row per kernel instantiation for ``arch`` (e.g. "90a", "80"); raises on a compile error."""
    exe = nvcc()
    if exe is None:
        raise FileNotFoundError("nvcc not found: the CUDA kernels cannot be checked")
    num = int(re.match(r"\d+", arch).group(0))
    rows = []
    for src in LAUNCHERS:
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cmd = [exe, "-cubin", f"-arch=sm_{arch}", "-std=c++17", "--expt-relaxed-constexpr", "-O3", "-Xptxas", "-v",
                   "-I", str(ROOT / "kernels"), "-I", str(ROOT / "csrc"), "-o", str(cubin), str(ROOT / "csrc" / src)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nvcc failed on csrc/{src} for sm_{arch}:\n{done.stderr[-3000:]}")
            info = _ptxas_info(done.stderr + done.stdout)
            text, _ = sass.dump(cubin.read_bytes())
        funcs = sass.parse(text)
        names = demangle(list(funcs))
        for fn, instrs in funcs.items():
            if not fn.startswith("_Z") or "adaptinf" not in names[fn]:
                continue
            meta = info.get(fn, {})
            inner, outer = sass.main_loop(instrs, num)
            short = re.search(r"adaptinf_(\w+<[^>]*>)", names[fn])
            row = {"source": f"csrc/{src}", "kernel": short.group(1) if short else names[fn], "arch": f"sm_{arch}",
                   "regs": meta.get("regs"),
                   "stack_bytes": meta.get("stack", 0),
                   "spill_bytes": meta.get("spill_stores", 0) + meta.get("spill_loads", 0),
                   "smem_bytes": meta.get("smem", 0), "threads": THREADS,
                   "blocks_per_sm": sass.occupancy(meta.get("regs", 0), meta.get("smem", 0), THREADS, num)}
            if inner is not None:
                loop = sass.report_loop(inner, num)
                row.update(main_loop=summary(loop, USEFUL_FLOPS_PER_ITER, THREADS // 32, num))
            rows.append(row)
    return rows


def summary(loop: sass.LoopReport, useful_flops: float, warps: int, arch: int) -> dict:
    """Issue bound, the bf16-peak fraction it allows (useful FLOPs at the bf16 dense rate), and the
    serial bound: the tensor-core share if a warp's other instructions never overlapped its MMAs
    (one resident warpgroup waiting on its own MMAs every iteration)."""
    flops_per_clk = 4096 if arch >= 90 else 2048  # dense bf16 per SM
    per_smsp = max(1.0, warps / 4)
    ideal = useful_flops / flops_per_clk
    mma_instrs = sum(v for k, v in loop.mix.items() if k in ("HGMMA", "HMMA", "IMMA"))
    other = loop.instructions - mma_instrs
    return {"instructions": loop.instructions, "tensor_cycles": loop.tensor_cycles,
            "issue_bound": round(loop.issue_bound, 3),
            "serial_bound": round(loop.tensor_cycles / max(loop.tensor_cycles + other, 1e-9), 3),
            "bf16_peak_bound": round(min(1.0, ideal / (max(loop.tensor_cycles, loop.instructions) * per_smsp)), 3),
            "mix": categories(loop.mix)}


# Instruction classes for the table (SASS opcode stems).
_CLASSES = {
    "tensor": ("HGMMA", "HMMA", "IMMA", "WARPGROUP"),
    "async copy": ("LDGSTS", "UTMALDG", "UBLKCP", "UTMASTG", "LDGDEPBAR", "DEPBAR", "SYNCS"),
    "global": ("LDG", "STG", "RED", "ATOM"),
    "shared": ("LDS", "STS", "LDSM", "STSM"),
    "local (spill)": ("LDL", "STL"),
    "integer": ("IMAD", "IADD3", "IADD", "LOP3", "SHF", "LEA", "ISETP", "SEL", "PRMT", "IMNMX", "VIMNMX", "VIADD",
                "IABS", "POPC", "FLO", "BREV", "PLOP3", "MOV", "LOP", "SHL", "SHR", "I2F", "F2I", "IDP", "P2R", "R2P"),
    "float": ("FADD", "FMUL", "FFMA", "FSETP", "FSEL", "FMNMX", "MUFU", "F2F", "F2FP", "HADD2", "HFMA2", "HMUL2", "FCHK"),
    "uniform": ("U",),
    "sync/branch": ("BAR", "BRA", "WARPSYNC", "BSYNC", "BSSY", "EXIT", "NOP", "MEMBAR", "FENCE", "ELECT", "VOTE", "SHFL"),
}


def categories(mix: dict[str, int]) -> dict[str, int]:
    out = {k: 0 for k in _CLASSES}
    out["other"] = 0
    for op, n in mix.items():
        for cls, stems in _CLASSES.items():
            if op in stems or (cls == "uniform" and op.startswith("U") and op not in ("UTMALDG", "UBLKCP", "UTMASTG")):
                out[cls] += n
                break
        else:
            out["other"] += n
    return {k: v for k, v in out.items() if v}
