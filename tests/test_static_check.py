"""The static performance check's SASS analysis on hand-written SASS (what it counts, and how)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.static import sass  # noqa: E402


def listing(lines: list[str], name: str = "kern") -> str:
    body = "\n".join(f"        /*{16 * i:04x}*/                   {text} ;" for i, text in enumerate(lines))
    return f"\tcode for sm_90a\n\t\tFunction : {name}\n\t.headerflags\t@\"EF_CUDA_SM90\"\n{body}\n"


NESTED = listing([
    "MOV R1, c[0x0][0x28]",                      # 0x00
    "IMAD R2, R3, R4, RZ",                       # 0x10  outer loop starts
    "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24",  # 0x20  inner loop starts (one peeled MMA before? no)
    "LDGSTS.E.BYPASS.128 [R5], desc[UR8][R6.64]",  # 0x30
    "IADD3 R7, R7, 0x1, RZ",                      # 0x40
    "@P0 BRA 0x20",                               # 0x50  inner back edge
    "FMNMX R8, R8, R9, PT",                       # 0x60
    "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24",   # 0x70  peeled: half an inner iteration's cycles
    "@P1 BRA 0x10",                               # 0x80  outer back edge
    "EXIT",                                       # 0x90
])


def test_parse_loops_and_nesting():
    (name, instrs), = sass.parse(NESTED).items()
    assert name == "kern" and len(instrs) == 10 and instrs[5].pred == "@P0"
    found = {(lp.lo, lp.hi): lp for lp in sass.loops(instrs)}
    assert set(found) == {(0x20, 0x50), (0x10, 0x80)}
    outer = found[(0x10, 0x80)]
    assert outer.children == [found[(0x20, 0x50)]]
    assert [i.opcode.split(".")[0] for i in outer.own()] == ["IMAD", "FMNMX", "HGMMA", "BRA"]


def test_main_loop_issue_bound_and_amortised_outer_loop():
    (_, instrs), = sass.parse(NESTED).items()
    inner, outer = sass.main_loop(instrs, 90)
    assert (inner.lo, outer.lo) == (0x20, 0x10)
    r = sass.report_loop(inner, 90)
    assert (r.instructions, r.tensor_cycles) == (4, 64.0) and r.issue_bound == 1.0
    assert r.mix == {"HGMMA": 1, "LDGSTS": 1, "IADD3": 1, "BRA": 1}
    # 8 source iterations, half of one peeled into the outer body: 7.5 SASS iterations
    a = sass.amortised(inner, outer, 8, 90)
    assert a.tensor_cycles == 32 + 7.5 * 64
    assert a.instructions == 4 + 30
    assert a.issue_bound == 1.0


def test_issue_bound_below_one_when_instructions_dominate():
    text = listing(["HMMA.16816.F32.BF16 R4, R8, R12, R4"] + ["IMAD R2, R3, R4, RZ"] * 6 + ["@P0 BRA 0x0", "EXIT"])
    (_, instrs), = sass.parse(text).items()
    inner, outer = sass.main_loop(instrs, 90)
    r = sass.report_loop(inner, 90)
    assert outer is None and r.instructions == 8
    assert r.tensor_cycles == 4.0 and r.issue_bound == pytest.approx(0.5)
    assert sass.report_loop(inner, 80).tensor_cycles == 8.0  # Ampere: half the rate per sub-partition


def test_tensor_cycle_table():
    assert sass.tensor_cycles("HGMMA.64x256x16.F32.BF16", 90) == 128
    assert sass.tensor_cycles("HGMMA.64x128x8.F32.TF32", 90) == 64  # half the flops at half the rate
    assert sass.tensor_cycles("HMMA.1688.F32.TF32", 80) == 8
    assert sass.tensor_cycles("HMMA.1688.F32", 80) == 4
    assert sass.tensor_cycles("IMAD", 90) == 0


def test_resources_and_occupancy():
    res = "Resource usage:\n Function kern:\n  REG:206 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:616\n"
    assert sass.resources(res) == {"kern": {"REG": 206, "STACK": 0, "SHARED": 1024, "LOCAL": 0}}
    assert sass.occupancy(206, 65536 + 1024, 128, 90) == 2  # registers: 208 × 128 × 2 <= 65536
    assert sass.occupancy(128, 100 << 10, 256, 90) == 2  # shared memory: 2 × 101 KiB fits 228 KiB
    assert sass.occupancy(255, 0, 256, 90) == 1


def test_no_loop_with_tensor_instructions():
    (_, instrs), = sass.parse(listing(["IMAD R2, R3, R4, RZ", "@P0 BRA 0x0", "EXIT"])).items()
    assert sass.main_loop(instrs, 90) == (None, None)


def test_warp_specialised_bound_adds_a_quarter_of_the_producer_stage_per_smsp():
    text = listing([
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R2], R3",     # 0x00  producer stage loop
        "LDGSTS.E.BYPASS.128.ZFILL [R4], desc[UR8][R6.64]",  # 0x10
        "STS.128 [R5], R8",                                 # 0x20
    ] + ["IMAD R2, R3, R4, RZ"] * 96 + [                    # 0x30 .. 0x620
        "@P1 BRA 0x0",                                      # 0x630
        "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24",    # 0x640  consumer loop: 64 tensor cycles
        "IADD3 R7, R7, 0x1, RZ",
        "@P2 BRA 0x640",
        "EXIT",
    ])
    (_, instrs), = sass.parse(text).items()
    consumer, _ = sass.main_loop(instrs, 90)
    producer = sass.producer_loop(instrs, 90)
    assert (consumer.lo, producer.lo) == (0x640, 0x0) and len(producer.own()) == 100
    both = sass.warp_specialised(sass.report_loop(consumer, 90), sass.report_loop(producer, 90), 8, 4)
    # two consumer warps per SMSP (2 x 3 instructions, 2 x 64 cycles) + 100 / 4 producer instructions
    assert (both.instructions, both.tensor_cycles) == (31, 128.0) and both.issue_bound == 1.0
    one = sass.warp_specialised(sass.report_loop(consumer, 90), sass.report_loop(producer, 90), 4, 1)
    assert one.instructions == 103 and one.issue_bound == pytest.approx(64 / 103)  # one producer warp: one SMSP


# ---- the shared-memory bound (bench/static/smem.py) and the pipelined kernels' SASS structure ----

from bench.static import cuda as cuda_report  # noqa: E402
from bench.static import smem  # noqa: E402


def test_shared_wavefronts_of_each_access_kind():
    (_, instrs), = sass.parse(listing([
        "STS.U16 [R1+0x100], R2",                          # 2 B/lane: 64 B, still one wavefront
        "STS.128 [R1], R4",                                # 16 B/lane: 512 B, 4 wavefronts
        "LDSM.16.M88.4 R8, [R3]",                          # four 8x8 matrices: 4
        "LDGSTS.E.BYPASS.128 [R5], desc[UR8][R6.64], P6",  # 4
        "LDS.64 R10, [R3]",                                # 256 B: 2
        "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24",   # SS: (64 + 128) rows x 32 B / 128 / 4 warps = 12
        "HGMMA.64x128x16.F32.BF16 R24, R120, gdesc[UR8], R24",  # RS: A from registers: 128 x 32 / 128 / 4 = 8
        "IMAD R2, R3, R4, RZ",
    ])).items()
    assert [smem.wavefronts(i) for i in instrs] == [1, 4, 4, 4, 2, 12, 8, 0]


def test_shared_bound_of_a_loop_against_its_tensor_cycles():
    # one warp's loop: 1 HGMMA 64x128 (64 cycles of its SMSP, 16 of the SM) and 20 wavefronts of stores
    (_, instrs), = sass.parse(listing(["HGMMA.64x128x16.F32.BF16 R24, R120, gdesc[UR8], R24"] + ["STS.128 [R1], R4"] * 3)).items()
    r = smem.from_sass(instrs, 90)
    assert r["wavefronts"] == 8 + 12 and r["shared_bound"] == pytest.approx(16 / 20)
    loop = smem.bounded({"issue_bound": 0.9, **r})
    assert (loop["bound"], loop["binds"]) == (pytest.approx(0.8), "shared")


def _pipe_sass(lines):
    return sass.parse(listing(lines))["kern"]


GOOD_WGMMA_LOOP = [
    "SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [R10+URZ+0x20000], R7",  # 0x00
    "WARPGROUP.ARRIVE",
    "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20], R24, UP0",
    "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR24], R24",
    "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR24], R24",
    "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20], R24, gsb0",
    "WARPGROUP.DEPBAR.LE gsb0, 0x1",
    "SYNCS.ARRIVE.TRANS64.A1T0 RZ, [R4+URZ+0x20020], RZ",
    "@P0 BRA 0x0",                                               # 0x80
    "STG.E.64 desc[UR4][R2.64], R24",
    "EXIT",
]


def test_structure_check_accepts_a_pipelined_wgmma_loop_and_paired_stores():
    assert cuda_report.structure_problems("project_pipe", 90, 90, _pipe_sass(GOOD_WGMMA_LOOP)) == []


def test_structure_check_flags_serialised_wgmma_unpaired_stores_and_bare_polling():
    serial = [line.replace("gsb0, 0x1", "gsb0, 0x0") for line in GOOD_WGMMA_LOOP]
    serial = [line.replace("STG.E.64", "STG.E") for line in serial]
    problems = cuda_report.structure_problems("project_pipe", 90, 90, _pipe_sass(serial))
    assert len(problems) == 2 and "gsb0, 0x1" in problems[1] and "STG.E.64" in problems[0]
    polling = ["SYNCS.PHASECHK.TRANS64 P0, [R2], R3", "@!P0 BRA 0x0", "HMMA.16816.F32.BF16 R4, R8, R12, R4", "EXIT"]
    assert cuda_report.structure_problems("kmeans_assign_pipe", 80, 80, _pipe_sass(polling)) == [
        "no NANOSLEEP: the sm_80 barrier waits poll without back-off"]
    assert cuda_report.structure_problems("kmeans_assign_pipe", 80, 80, _pipe_sass(["NANOSLEEP 0x20"] + polling)) == []
