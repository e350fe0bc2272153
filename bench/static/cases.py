"""The named shapes of the static check: each calls the package's own launchers on meta tensors.

Categories: ``production`` (the shapes the GPU-speed issue sets targets for; a spill there fails
CI), ``bench`` (the GPU bench suites' shapes) and ``test`` (the kernel tests' odd sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .record import Launch

META = "meta"


@dataclass
class Case:
    name: str
    op: str
    category: str
    run: Callable[[], None]
    useful_flops: Callable[[Launch], float]  # per iteration of the main loop, per program
    inner_trips: Callable[[Launch], int] | None = None
    target: float | None = None  # least issue bound of the main loop on sm_90 (the GPU-speed issue's targets)


def _project(b: int, p: int, k: int, dtype=torch.bfloat16, kind: str = "rademacher") -> Callable[[], None]:
    def run():
        from adaptinf_fast.ops.projection import triton as pt

        x = torch.empty(b, p, dtype=dtype, device=META)
        out = torch.zeros(b, k, device=META)
        pt.project_into(x, out, seed=1, kind=kind, row_offset=0)

    return run


def _projection_flops(launch: Launch) -> float:
    c = launch.kwargs
    return 2.0 * c["BLOCK_B"] * c["BLOCK_N"] * c["BLOCK_P"]


def _name(b, p, k, dtype, kind):
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    exp = p.bit_length() - 1
    ps = f"2^{exp}" if p == 1 << exp else str(p)
    return f"project {kind[:3]} {dt} B={b} P={ps} k={k}"


def _projection_cases() -> list[Case]:
    out = []
    production = [(256, 1 << 26, 8192, torch.bfloat16, "rademacher"), (128, 1 << 26, 8192, torch.bfloat16, "rademacher"),
                  (256, 1 << 26, 8192, torch.float16, "rademacher"), (256, 1 << 26, 8192, torch.float32, "rademacher"),
                  (256, 1 << 26, 8192, torch.bfloat16, "gaussian"), (256, 1 << 26, 8192, torch.float32, "gaussian")]
    bench = [(b, p, k, torch.bfloat16, "rademacher") for b in (16, 256) for p in (1 << 20, 1 << 25) for k in (4096, 8192)]
    test = [(3, 257, 130, torch.float32, "rademacher"), (17, 95, 64, torch.float32, "gaussian"),
            (5, 150, 96, torch.bfloat16, "gaussian"), (5, 150, 96, torch.float16, "rademacher")]
    # every tile the launcher can choose, with and without Triton's divisible-by-16 specialisation
    sweep = [(b, p, 8192, dt, kind) for dt in (torch.bfloat16, torch.float16, torch.float32)
             for kind in ("rademacher", "gaussian") for b in (5, 33, 129, 256) for p in (257, 1 << 20)]
    for cat, shapes in (("production", production), ("bench", bench), ("test", test), ("sweep", sweep)):
        for b, p, k, dtype, kind in shapes:
            target = None
            if cat == "production" and kind == "rademacher" and dtype != torch.float32:
                target = 0.7 if b >= 256 else 0.45
            out.append(Case(_name(b, p, k, dtype, kind), "projection", cat, _project(b, p, k, dtype, kind),
                            _projection_flops, target=target))
    return out


CASES: list[Case] = _projection_cases()


def _kmeans(n: int, k: int, d: int, metric: str) -> Callable[[], None]:
    def run():
        from adaptinf_fast.ops.kmeans import triton as kt

        dtype = torch.float16 if metric == "cosine" else torch.bfloat16
        rows = kt.ScreenedRows(torch.empty(n, d, dtype=dtype, device=META), torch.empty(n, device=META),
                               torch.empty(n, device=META))
        kt.screened_assign(rows, torch.empty(k, d, device=META), metric, torch.empty(k, device=META))

    return run


def _maxsim(sizes: list[int], d: int) -> Callable[[], None]:
    def run():
        from adaptinf_fast.ops.dedup import triton as dt

        n = sum(sizes)
        labels = torch.cat([torch.full((s,), i, dtype=torch.int64) for i, s in enumerate(sizes)]).to(META)
        low = torch.empty(n, -(-d // 16) * 16, dtype=torch.float16, device=META)  # screen.low_copy's shape
        dt.screened_launch(low, labels, torch.arange(n, device=META))

    return run


def _tile_flops(m: str, n: str, d: str) -> Callable[[Launch], float]:
    return lambda launch: 2.0 * launch.kwargs[m] * launch.kwargs[n] * launch.kwargs[d]


def _d_trips(d: int) -> Callable[[Launch], int]:
    return lambda launch: -(-d // launch.kwargs["BLOCK_D"])


def _selection_cases() -> list[Case]:
    out = []
    km = [("production", 1_000_000, 1024, 1024, m) for m in ("l2", "cosine")]
    km += [("bench", 1_000_000, k, d, "l2") for d in (128, 1024, 8192) for k in (10, 1024, 16384) if (d, k) != (1024, 1024)]
    km += [("test", n, k, d, m) for n, k, d in ((1, 1, 1), (70, 13, 33), (130, 300, 5), (17, 3, 129)) for m in ("l2", "cosine")]
    for cat, n, k, d, metric in km:
        out.append(Case(f"kmeans {metric} N={n} K={k} D={d}", "kmeans", cat, _kmeans(n, k, d, metric),
                        _tile_flops("BLOCK_M", "BLOCK_K", "BLOCK_D"), _d_trips(d), 0.6 if cat == "production" else None))
    ms = [("production", [200_000], 1024), ("bench", [20_000], 384), ("test", [5, 1, 60, 200], 48), ("test", [3, 4], 7)]
    for cat, sizes, d in ms:
        label = f"{sizes[0]}" if len(sizes) == 1 else f"{len(sizes)} clusters"
        out.append(Case(f"max-sim {label} D={d}", "dedup", cat, _maxsim(sizes, d),
                        _tile_flops("BLOCK_M", "BLOCK_N", "BLOCK_D"), _d_trips(d), 0.6 if cat == "production" else None))
    return out


CASES += _selection_cases()


# LoRA r=128 on q, k, v, o, gate, up, down of one Llama-2-7B decoder layer (hidden 4096, MLP 11008):
# A is r × d_in, B is d_out × r.
LAST_LAYER_LORA_7B = 128 * (6 * 4096 + 11008) + 128 * (5 * 4096 + 2 * 11008)


def _featurizer(rows: int, samples: int, out_dim: int) -> Callable[[], None]:
    def run():
        from adaptinf_fast.features.gradbuffer import GradientBuffer

        buf = GradientBuffer(rows, samples, out_dim, seed=0, kind="rademacher", backend="triton", device=torch.device(META))
        buf.commit(samples)
        buf.project()

    return run


CASES += [
    Case(f"featurizer buffer 256 x {LAST_LAYER_LORA_7B} (7B last layer r=128) k=8192", "featurizer", "production",
         _featurizer(LAST_LAYER_LORA_7B, 256, 8192), _projection_flops, target=0.6),
    Case("featurizer without buffer: fp32 B=16 P=2^20 k=8192", "featurizer", "test",
         _project(16, 1 << 20, 8192, torch.float32), _projection_flops),
]
