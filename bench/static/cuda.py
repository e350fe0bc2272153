"""The CUDA kernels' static report: nvcc -Xptxas -v for registers/spills, cuobjdump -sass for loops."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import sass, smem

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("project_launch.cu", "kmeans_launch.cu", "dedup_launch.cu")
# kernels/tile_mma.cuh: every kernel walks its reduction 32 deep per iteration on a 64 x 64 tile
USEFUL_FLOPS_PER_ITER = 2 * 64 * 64 * 32
THREADS = 128
# kernels/pipe.cuh: (consumer warpgroups, issue-bound target) of the warp-specialised 16-bit kernels.
# A stage is 64 C rows x 128 columns x 64 deep; the block adds one producer warpgroup; shared
# memory is 4 stages of (64 C + 128) rows x 128 bytes, the barriers and 1 KiB of alignment slack.
PIPE = {"project_pipe": (2, 0.70), "kmeans_assign_pipe": (2, 0.60), "max_sim_pipe": (1, 0.60)}


def structure_problems(family: str, template_arch: int, num: int, instrs) -> list[str]:
    """What a pipelined kernel's SASS must show beyond its bounds (on the architecture its path is
    built for): sm_80's barrier wait backs off (NANOSLEEP), the projection's epilogue stores float
    pairs (STG.E.64), and sm_90a's stage loop keeps one wgmma group in flight: one WARPGROUP.ARRIVE,
    the 4 HGMMAs of a stage and a single wait for all but the newest group (DEPBAR.LE gsb0, 0x1);
    a compiler that serialised the MMAs (a wait for 0 inside the loop) would show there."""
    problems = []
    ops = [i.opcode for i in instrs]
    if template_arch == 80 and num < 90 and "NANOSLEEP" not in ops:
        problems.append("no NANOSLEEP: the sm_80 barrier waits poll without back-off")
    if family == "project_pipe" and not any(o.startswith("STG.E.64") for o in ops):
        problems.append("the epilogue stores no float pairs (no STG.E.64)")
    if template_arch == 90 and num >= 90:
        inner, _ = sass.main_loop(instrs, num)
        body = inner.own() if inner is not None else []
        hgmma = sum(1 for i in body if i.opcode.startswith("HGMMA"))
        arrives = sum(1 for i in body if i.opcode == "WARPGROUP.ARRIVE")
        waits = [i.operands.replace(" ", "") for i in body if i.opcode.startswith("WARPGROUP.DEPBAR")]
        if (hgmma, arrives, waits) != (4, 1, ["gsb0,0x1"]):
            problems.append(f"the wgmma stage loop has {arrives} arrive(s), {hgmma} HGMMA(s) and waits {waits} "
                            "(want 1, 4 and one wait for all but the newest group: gsb0, 0x1)")
    return problems


def _pipe_row(row: dict, family: str, template_arch: int, instrs, num: int) -> None:
    """Adds the warp-specialised view of a pipe kernel to its report row (see sass.warp_specialised)."""
    c, target = PIPE[family]
    row.update(threads=128 * (c + 1), smem_bytes=4 * (64 * c + 128) * 128 + 64 + 1024,
               runs_on_this_arch=template_arch == (90 if num >= 90 else 80))
    row["blocks_per_sm"] = sass.occupancy(row["regs"] or 0, row["smem_bytes"], row["threads"], num)
    row["target_issue_bound"] = target if row["runs_on_this_arch"] else None
    row["structure_problems"] = structure_problems(family, template_arch, num, instrs) if row["runs_on_this_arch"] else []
    inner, _ = sass.main_loop(instrs, num)
    producer = sass.producer_loop(instrs, num)
    if inner is None or producer is None:
        row.pop("main_loop", None)
        return
    useful = 2 * 64 * c * 128 * 64
    cons, prod = sass.report_loop(inner, num), sass.report_loop(producer, num)
    row["consumer_loop"] = sass.summary(cons, useful / c, 4, num)
    row["producer_loop"] = {"instructions": prod.instructions, "mix": sass.categories(prod.mix)}
    both = sass.warp_specialised(cons, prod, 4 * c, 4)
    row["main_loop"] = sass.summary(both, useful, 4, num)  # one SMSP's share of a stage: 4 "warps" = the SM
    shared = smem.pipe_stage(family, template_arch, num)
    row["shared_per_stage"] = {"per_kind": shared["per_kind"], "conflict_factor": shared["conflict_factor"]}
    row["main_loop"].update(wavefronts=shared["wavefronts"], shared_bound=shared["shared_bound"])

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
                row.update(main_loop=sass.summary(loop, USEFUL_FLOPS_PER_ITER, THREADS // 32, num))
                row["main_loop"].update(smem.from_sass(inner.own(), num))
            family = short.group(1).split("<")[0] if short else ""
            if family in PIPE:
                _pipe_row(row, family, int(re.search(r"(\d+)>$", row["kernel"]).group(1)), instrs, num)
            if row.get("main_loop"):
                smem.bounded(row["main_loop"])
            rows.append(row)
    return rows
