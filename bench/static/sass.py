"""SASS of a cubin -> the main loop's instruction mix and the issue bound.

Model (per warp, per loop iteration; every warp of a kernel runs the same loop): a warp issues at
most one instruction per cycle on its SM sub-partition, and its tensor-core instructions keep the
sub-partition's tensor core busy for a known number of cycles (``tensor_cycles``). The fraction of
time the tensor cores can be busy is then at most

    issue bound = tensor cycles / max(tensor cycles, issued instructions).

It ignores memory latency and bandwidth, shared-memory (MIO) throughput and waits on the
asynchronous MMAs: it is an upper bound that a GPU run must confirm, not a prediction.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:(@!?U?P[T0-9]+)\s+)?([A-Z][A-Z0-9_.x]*)\s*([^;]*);")
_FUNC = re.compile(r"Function : (\S+)")

# Tensor-core cycles per warp instruction. Hopper does 2048 dense bf16 FMA/clk/SM (512 per
# sub-partition) and Ampere 1024 (256): an HGMMA 64xNxK keeps a warpgroup's four tensor cores busy
# N/2 cycles whatever the input type (k16 bf16/fp16, k8 tf32 at half rate, k32 fp8 at double),
# an HMMA m16n8k16 (or tf32 m16n8k8) 4 cycles on sm_90 at the full rate (legacy mma.sync reaches
# less on Hopper in practice) and 8 on sm_80; m16n8k8 half-precision HMMAs take half that.
def tensor_cycles(opcode: str, arch: int) -> float:
    m = re.match(r"HGMMA\.64x(\d+)x(\d+)", opcode)
    if m:
        return int(m.group(1)) / 2
    if opcode.startswith("HMMA"):
        shape = opcode.split(".")[1] if "." in opcode else ""
        base = 4.0 if arch >= 90 else 8.0
        if shape == "1688" and ".TF32" not in opcode:  # m16n8k8 fp16/bf16: half the work of 16816
            return base / 2
        return base
    return 0.0


@dataclass
class Instr:
    addr: int
    pred: str | None
    opcode: str
    operands: str


@dataclass
class Loop:
    lo: int  # first instruction address (the branch target)
    hi: int  # address of the last backward branch
    instrs: list[Instr] = field(default_factory=list)
    children: list["Loop"] = field(default_factory=list)

    def own(self) -> list[Instr]:
        """Instructions of this loop's body outside its nested loops."""
        inner = [(c.lo, c.hi) for c in self.children]
        return [i for i in self.instrs if not any(lo <= i.addr <= hi for lo, hi in inner)]


def parse(sass_text: str) -> dict[str, list[Instr]]:
    """``cuobjdump -sass`` output -> instructions per function (mangled names)."""
    funcs: dict[str, list[Instr]] = {}
    current = None
    for line in sass_text.splitlines():
        f = _FUNC.search(line)
        if f:
            current = funcs.setdefault(f.group(1), [])
            continue
        m = _LINE.search(line)
        if m and current is not None:
            current.append(Instr(int(m.group(1), 16), m.group(2), m.group(3), m.group(4).strip()))
    return funcs


def loops(instrs: list[Instr]) -> list[Loop]:
    """Loops from backward branches (several branches to one target make one loop), nested."""
    ends: dict[int, int] = {}
    for i in instrs:
        if i.opcode.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", i.operands)
            if t and int(t.group(1), 16) <= i.addr:
                lo = int(t.group(1), 16)
                ends[lo] = max(ends.get(lo, lo), i.addr)
    found = [Loop(lo, hi, [i for i in instrs if lo <= i.addr <= hi]) for lo, hi in ends.items()]
    for a in found:
        inside = [b for b in found if b is not a and a.lo <= b.lo and b.hi <= a.hi]
        a.children = [b for b in inside if not any(c is not b and c.lo <= b.lo and b.hi <= c.hi for c in inside)]
    return found


def mix(instrs: list[Instr]) -> dict[str, int]:
    return dict(collections.Counter(i.opcode.split(".")[0] for i in instrs).most_common())


def _cycles(instrs: list[Instr], arch: int) -> float:
    return sum(tensor_cycles(i.opcode, arch) for i in instrs)


@dataclass
class LoopReport:
    instructions: int
    tensor_cycles: float
    mix: dict[str, int]

    @property
    def issue_bound(self) -> float:
        return self.tensor_cycles / max(self.tensor_cycles, self.instructions, 1e-9)


def main_loop(instrs: list[Instr], arch: int) -> tuple[Loop | None, Loop | None]:
    """(innermost loop with the most tensor-core cycles, the loop directly around it or None)."""
    all_loops = loops(instrs)
    with_mma = [lp for lp in all_loops if _cycles(lp.own(), arch) > 0]
    if not with_mma:
        return None, None
    inner = max(with_mma, key=lambda lp: (_cycles(lp.own(), arch), -(lp.hi - lp.lo)))
    parents = [lp for lp in all_loops if inner in lp.children]
    return inner, (parents[0] if parents else None)


def report_loop(loop: Loop, arch: int) -> LoopReport:
    own = loop.own()
    return LoopReport(len(own), _cycles(own, arch), mix(own))


def amortised(inner: Loop, outer: Loop, trips: int, arch: int) -> LoopReport:
    """One outer iteration with ``trips`` source iterations of the inner loop. Software pipelining
    peels some inner iterations into the outer body; their MMAs are counted there, so the SASS loop
    runs trips − peeled times (peeled = the outer body's MMAs over one inner iteration's)."""
    own_in, own_out = inner.own(), outer.own()
    per = _cycles(own_in, arch)
    peeled = _cycles(own_out, arch) / per if per else 0.0
    n = max(0.0, trips - peeled)
    counts = collections.Counter(mix(own_out))
    for k, v in mix(own_in).items():
        counts[k] += v * n
    return LoopReport(int(round(len(own_out) + n * len(own_in))), _cycles(own_out, arch) + n * per,
                      {k: int(round(v)) for k, v in counts.most_common()})


def producer_loop(instrs: list[Instr], arch: int) -> Loop | None:
    """The producer warps' stage loop of a warp-specialised kernel: among the loops without
    tensor-core instructions, the one with the most shared-memory fills (LDGSTS, STS, UTMALDG) of
    its own, the shortest of those (a wait's retry branch placed after the code can make a longer
    backward jump that spans the stage loop and the consumers' code; it is not the stage loop)."""
    def fills(lp: Loop) -> int:
        return sum(1 for i in lp.own() if i.opcode.startswith(("LDGSTS", "STS", "UTMALDG")))

    found = [lp for lp in loops(instrs) if _cycles(lp.own(), arch) == 0 and fills(lp)]
    return max(found, key=lambda lp: (fills(lp), -(lp.hi - lp.lo)), default=None)


def warp_specialised(consumer: LoopReport, producer: LoopReport, consumer_warps: int, producer_warps: int) -> LoopReport:
    """One pipeline stage on the busiest SM sub-partition (SMSP) of a warp-specialised kernel.

    Warp w runs on SMSP w % 4. Every consumer warp runs one consumer-loop iteration per stage
    (``consumer_warps / 4`` of them per SMSP, whose tensor-core cycles the SMSP's tensor core
    serves); one producer warp fills each stage with one producer-loop iteration, the producer
    warps taking the stages in turn, so the busiest SMSP issues ceil(P / 4) / P producer
    iterations per stage. Issue bound = tensor cycles / max(tensor cycles, issued instructions)."""
    per_smsp = -(-consumer_warps // 4)
    share = -(-producer_warps // 4) / producer_warps
    counts = collections.Counter({k: v * per_smsp for k, v in consumer.mix.items()})
    for k, v in producer.mix.items():
        counts[k] += v * share
    return LoopReport(int(round(consumer.instructions * per_smsp + producer.instructions * share)),
                      consumer.tensor_cycles * per_smsp, {k: int(round(v)) for k, v in counts.most_common()})


def tool(name: str) -> str:
    """cuobjdump / nvdisasm: Triton's bundled copies first, then the CUDA toolkit's."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/local").glob("cuda*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    raise FileNotFoundError(f"{name} not found (install triton or the CUDA toolkit)")


def dump(cubin: bytes) -> tuple[str, str]:
    """(SASS text, resource usage text) of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return sass, res


def resources(res_text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage`` -> per function {REG, STACK, SHARED, LOCAL}."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in res_text.splitlines():
        f = re.search(r"Function (\S+):", line)
        if f:
            current = f.group(1)
            continue
        if current and "REG:" in line:
            out[current] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line) if k in ("REG", "STACK", "SHARED", "LOCAL")}
    return out


def occupancy(regs: int, smem_bytes: int, threads: int, arch: int) -> int:
    """Blocks per SM allowed by registers (allocated per warp in units of 256) and shared memory."""
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    warps = -(-threads // 32)
    by_regs = 65536 // (regs_per_warp * warps)
    smem_sm = 233472 if arch >= 90 else 167936  # 228 KiB / 164 KiB per SM, 1 KiB reserved per block
    by_smem = smem_sm // (smem_bytes + 1024) if smem_bytes else 32
    return max(0, min(by_regs, by_smem, 64 // warps, 32))


def summary(loop: LoopReport, useful_flops: float, warps: int, arch: int) -> dict:
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
