"""Shared-memory throughput: the second static bound beside the issue bound (sass.py).

An SM moves at most 128 bytes through shared memory per cycle: one *wavefront*. A warp's shared
access is split into phases of 128 bytes (8 lanes for 16-byte accesses, 16 for 8-byte, 32 for
4-byte or narrower); a phase costs as many wavefronts as the most distinct 4-byte words that fall
into one of the 32 banks (bank conflicts), and at least one. wgmma reads its shared-memory
operands through descriptors, A (64 rows, if not in registers) and B (N rows) of 32 bytes per row
per instruction, conflict-free in the 128-byte swizzle. Per main-loop iteration (or pipeline stage)

    shared bound = tensor-core cycles of the SM / max(tensor-core cycles, wavefronts).

Two sources of wavefronts:
* ``from_sass``: the SASS of a loop (Triton kernels, the CUDA WMMA kernels). Addresses are not
  static, so every access is counted at its conflict-free minimum (Triton's shared layouts are
  swizzled for the accesses it makes): a lower bound on the traffic, so an upper bound on speed.
* ``pipe_stage``: the warp-specialised CUDA kernels (kernels/pipe.cuh) run through the host
  emulator with its bank profile on (``_cuda_emu.smem_profile``), which logs every lane's address
  of every ld/st.shared, cp.async and ldmatrix, so conflicts of the real address code count.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

from . import sass

BYTES_PER_WAVEFRONT = 128
# dense bf16 FMA per clock per SM (sass.tensor_cycles' rates over 4 sub-partitions)
FMA_PER_CLOCK = {90: 2048, 80: 1024}


def _width(opcode: str) -> int:
    """Bytes per lane of an LDS/STS/LDGSTS variant."""
    if ".128" in opcode:
        return 16
    if ".64" in opcode:
        return 8
    if re.search(r"\.[US]16", opcode):
        return 2
    if re.search(r"\.[US]8", opcode):
        return 1
    return 4


def wavefronts(instr: sass.Instr) -> float:
    """Least wavefronts one warp's instance of ``instr`` costs (HGMMA: this warp's quarter of its
    warpgroup's operand reads)."""
    op = instr.opcode
    m = re.match(r"HGMMA\.64x(\d+)x\d+", op)
    if m:
        a_in_smem = instr.operands.split(",")[1].strip().startswith("gdesc")  # RS form: A in registers
        return ((64 if a_in_smem else 0) + int(m.group(1))) * 32 / BYTES_PER_WAVEFRONT / 4
    if op.startswith(("LDSM", "STSM")):  # .x4 / .x2 / .x1: 8 rows of 16 bytes per matrix
        n = re.search(r"\.(\d)$", op)
        return float(n.group(1)) if n else 1.0
    if op.startswith(("LDS", "STS", "LDGSTS")) and not op.startswith("LDSM"):
        return max(1.0, 32 * _width(op) / BYTES_PER_WAVEFRONT)
    return 0.0


def from_sass(instrs: list[sass.Instr], arch: int) -> dict:
    """Shared bound of one loop body that every warp of the block runs (tensor cycles and
    wavefronts both scale with the warps, so the ratio is per warp)."""
    wf = sum(wavefronts(i) for i in instrs)
    tensor = sum(sass.tensor_cycles(i.opcode, arch) for i in instrs) / 4  # the SM's share of one warp's MMAs
    return {"wavefronts": round(wf, 2), "shared_bound": round(tensor / max(tensor, wf, 1e-9), 3) if tensor else 0.0}


def bounded(loop: dict) -> dict:
    """Adds a loop report's bound (the smaller of its issue and shared-memory bounds) and which binds."""
    issue, shared = loop.get("issue_bound", 0.0), loop.get("shared_bound", 1.0)
    loop["bound"], loop["binds"] = (issue, "issue") if issue <= shared else (shared, "shared")
    return loop


# ---- the pipelined CUDA kernels, through the emulator --------------------------------------------

# family -> (block rows of C, stage MMA shape (M, N, K) per block)
PIPE_STAGE = {"project_pipe": (128, 128, 64), "kmeans_assign_pipe": (128, 128, 64), "max_sim_pipe": (64, 128, 64)}


@contextmanager
def _emulating(path: int):
    old = os.environ.get("ADAPTINF_EMULATE_ARCH")
    os.environ["ADAPTINF_EMULATE_ARCH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ADAPTINF_EMULATE_ARCH", None)
        else:
            os.environ["ADAPTINF_EMULATE_ARCH"] = old


def _launch(ext, family: str, stages: int) -> None:
    """One block of ``family`` walking ``stages`` pipeline stages on host buffers."""
    import torch

    d = 64 * stages
    if family == "project_pipe":
        x, ws = torch.randn(128, d).to(torch.bfloat16), torch.zeros(1, 128, 128)
        ext.project(x.data_ptr(), 2, ws.data_ptr(), 128, d, 128, d, 7, 0, d, "rademacher", 0, 0)
    elif family == "kmeans_assign_pipe":
        x, c = torch.randn(128, d).to(torch.bfloat16), torch.randn(128, d).to(torch.bfloat16)
        cn, xn = c.float().square().sum(1), x.float().square().sum(1)
        labels, values = torch.empty(128, dtype=torch.int64), torch.empty(128)
        ext.kmeans_assign(x.data_ptr(), c.data_ptr(), 2, cn.data_ptr(), xn.data_ptr(), labels.data_ptr(),
                          values.data_ptr(), 128, 128, d, False, 0, 0)
    elif family == "max_sim_pipe":
        xs = torch.nn.functional.normalize(torch.randn(64, d), dim=1).to(torch.float16)
        start, tiles = torch.zeros(64, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
        best, arg = torch.empty(64), torch.empty(64, dtype=torch.int64)
        ext.max_sim(xs.data_ptr(), 1, start.data_ptr(), tiles.data_ptr(), 1, best.data_ptr(), arg.data_ptr(), 64, d,
                    0, 0)
    else:
        raise KeyError(family)


def _profile(ext, family: str, stages: int) -> dict[str, tuple[int, int, int]]:
    ext.smem_profile(True)
    try:
        _launch(ext, family, stages)
        return dict(ext.smem_report())
    finally:
        ext.smem_profile(False)


_PIPE_CACHE: dict[tuple[str, int], dict] = {}


def pipe_stage(family: str, path: int, arch: int) -> dict:
    """Wavefronts per pipeline stage of ``family`` on its ``path`` (90: wgmma, 80: mma.sync), from
    the emulator's bank profile (the difference of 4 and 2 stages: a block's one-off epilogue
    traffic drops out), against the stage's tensor-core cycles on sm_``arch``."""
    key = (family, path)
    if key not in _PIPE_CACHE:
        from adaptinf_fast import _cuda_emu as ext  # built beside _C; CI requires it

        with _emulating(path):
            two, four = _profile(ext, family, 2), _profile(ext, family, 4)
        _PIPE_CACHE[key] = {kind: {"requests": (four[kind][0] - two[kind][0]) / 2,
                                   "wavefronts": (four[kind][1] - two[kind][1]) / 2,
                                   "bytes": (four[kind][2] - two[kind][2]) / 2} for kind in four}
    per_kind = {k: v for k, v in _PIPE_CACHE[key].items() if v["requests"]}
    m, n, k = PIPE_STAGE[family]
    tensor = m * n * k / FMA_PER_CLOCK[90 if arch >= 90 else 80]
    wf = sum(v["wavefronts"] for v in per_kind.values())
    conflicts = {kind: round(v["wavefronts"] / (max(v["bytes"], 1) / BYTES_PER_WAVEFRONT), 2)
                 for kind, v in per_kind.items()}
    return {"wavefronts": wf, "tensor_cycles": tensor, "shared_bound": round(tensor / max(tensor, wf), 3),
            "per_kind": per_kind, "conflict_factor": conflicts}
