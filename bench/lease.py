"""The steps of the GPU lease check (``bench/gpu_check.sh lease``), each writing its results the
moment they exist, as JSON lines under --out.

    python bench/lease.py smoke --out DIR [--dry]   one small case per kernel x backend x path vs reference.py
    python bench/lease.py bench --out DIR [--dry] [--only gemm projection kmeans maxsim features]
    python bench/lease.py ncu-target                one production-tile projection for ncu to profile
    python bench/lease.py summary --out DIR         the table the lease prints last

smoke.jsonl: {"case", "backend", "path", "ok", "error" (relative), "seconds", "note"}; a case that
raises is recorded with ok false and the exception, and the step goes on. bench.jsonl: {"suite",
"method", "seconds", "flops", "tflops", "fraction_of_gemm", ...}, the device's bf16 GEMM rate
measured first in the same process. ``--dry`` runs the same steps on CPU tensors (Triton through
its interpreter, the CUDA kernels through the host emulator, both paths), at tiny shapes: CI runs
it so the script cannot rot between leases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["smoke", "bench", "ncu-target", "summary"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu-run")
    ap.add_argument("--dry", action="store_true", help="CPU tensors, Triton interpreter, CUDA emulator, tiny shapes")
    ap.add_argument("--only", nargs="+", default=None)
    return ap.parse_args(argv)


ARGS = _args(sys.argv[1:]) if __name__ == "__main__" else None
if ARGS is not None and ARGS.dry:  # before triton or the package is imported
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["ADAPTINF_CUDA_EMULATE"] = "1"

import torch  # noqa: E402

DEVICE = "cpu" if (ARGS is not None and ARGS.dry) or not torch.cuda.is_available() else "cuda"
DRY = DEVICE == "cpu"  # smaller smoke shapes: the emulator and the interpreter run the same kernels slowly


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        return math.inf
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


@contextmanager
def env(**values: str | None):
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- smoke: one small case per kernel x backend x path ------------------------------------------

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_projection(backend: str, dtype: torch.dtype, kind: str) -> tuple[float, float]:
    import adaptinf_fast as af

    p, k = (200, 130) if DRY else (1000, 300)
    x = torch.randn(37, p, generator=_gen(1)).to(dtype)
    got = af.project(x.to(DEVICE), k, seed=11, kind=kind, row_offset=2**33 + 3, backend=backend)
    want = af.project(x.float(), k, seed=11, kind=kind, row_offset=2**33 + 3, backend="torch")
    # 16-bit Gaussian R is rounded to the input type on the tensor cores (~2^-9 per entry)
    return rel_error(got, want), 1e-2 if kind == "gaussian" and dtype != torch.float32 else 1e-4


def check_kmeans(backend: str, dtype: torch.dtype, metric: str) -> tuple[float, float]:
    import adaptinf_fast as af

    x, c = torch.randn(300, 72, generator=_gen(2)), torch.randn(50, 72, generator=_gen(3))
    if metric == "cosine":
        x, c = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(c, dim=1)
    x, c = x.to(dtype), c.to(dtype)
    labels, values = af.kmeans_assign(x.to(DEVICE), c.to(DEVICE), metric=metric, backend=backend)
    want_labels, want_values = af.kmeans_assign(x.float(), c.float(), metric=metric, backend="torch")
    wrong = int((labels.cpu() != want_labels).sum())  # exact decisions: screens recheck near-ties in fp32
    return (rel_error(values, want_values) if wrong == 0 else math.inf), 1e-4


def check_max_sim(backend: str, dtype: torch.dtype) -> tuple[float, float]:
    import adaptinf_fast as af

    x = torch.nn.functional.normalize(torch.randn(300, 72, generator=_gen(4)), dim=1).to(dtype)
    labels = torch.randint(0, 4, (300,), generator=_gen(5))
    x[200:205] = x[201]  # duplicates: ties to the earliest
    labels[200:205] = 1
    best, arg = af.cluster_max_similarity(x.to(DEVICE), labels.to(DEVICE), backend=backend)
    want_best, want_arg = af.cluster_max_similarity(x.float(), labels, backend="torch")
    finite = torch.isfinite(want_best)
    same = torch.equal(torch.isfinite(best.cpu()), finite) and torch.equal(arg.cpu()[~finite], want_arg[~finite])
    dup_args = all(int(arg[i]) == int(want_arg[i]) for i in range(202, 205))
    return (rel_error(best.cpu()[finite], want_best[finite]) if same and dup_args else math.inf), 1e-4


def check_featurizer(backend: str) -> tuple[float, float]:
    import adaptinf_fast as af
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1 if DRY else 2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                            lora_dropout=0.0, init_lora_weights=False))
    ids = torch.randint(3, 256, (4 if DRY else 6, 24), generator=_gen(6))
    labels = ids.clone()
    labels[:, :12] = -100
    rows = [{"id": i, "input_ids": ids[i], "labels": labels[i]} for i in range(len(ids))]
    feats = {}
    for name, dev, be in (("got", DEVICE, backend), ("want", "cpu", "torch")):
        fz = af.GradientFeaturizer(model.to(dev), layers="all", out_dim=256, backend=be)
        feats[name] = fz.extract(rows, batch_size=2, progress=False).features
    return rel_error(feats["got"], feats["want"]), 1e-3


def smoke_cases(dry: bool) -> list[tuple[str, str, str, dict, Callable[[], tuple[float, float]]]]:
    """(case, backend, path, environment, check) for every kernel x backend x path."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    cases = [
        ("project bf16 rademacher", "triton", "tl.dot", {}, lambda: check_projection("triton", bf16, "rademacher")),
        ("project fp32 rademacher (3 x bf16 split)", "triton", "tl.dot", {}, lambda: check_projection("triton", fp32, "rademacher")),
        ("project bf16 gaussian", "triton", "tl.dot", {}, lambda: check_projection("triton", bf16, "gaussian")),
        ("kmeans_assign l2 bf16", "triton", "screened", {}, lambda: check_kmeans("triton", bf16, "l2")),
        ("kmeans_assign cosine fp32", "triton", "screened", {}, lambda: check_kmeans("triton", fp32, "cosine")),
        ("max_sim fp16", "triton", "screened", {}, lambda: check_max_sim("triton", fp16)),
        ("featurizer (all LoRA layers)", "triton", "tl.dot", {}, lambda: check_featurizer("triton")),
    ]
    # CUDA paths: on a GPU the default (wgmma on an sm_90a build of _C), mma.sync forced, the WMMA
    # kernels, then the CuPy/NVRTC JIT; in the emulator the two pipeline paths and WMMA.
    paths = ([("wgmma", {"ADAPTINF_EMULATE_ARCH": "90"}), ("mma.sync", {"ADAPTINF_EMULATE_ARCH": "80"}),
              ("wmma", {"ADAPTINF_CUDA_PIPELINE": "0"})] if dry else
             [("default (_C)", {}), ("mma.sync (_C)", {"ADAPTINF_CUDA_PIPELINE": "80"}),
              ("wmma (_C)", {"ADAPTINF_CUDA_PIPELINE": "0"}), ("mma.sync (CuPy/NVRTC JIT)", {"ADAPTINF_CUDA_JIT": "1"})])
    for path, extra in paths:
        cases += [
            ("project bf16 rademacher", "cuda", path, extra, lambda: check_projection("cuda", bf16, "rademacher")),
            ("project fp16 rademacher", "cuda", path, extra, lambda: check_projection("cuda", fp16, "rademacher")),
            ("kmeans_assign l2 bf16", "cuda", path, extra, lambda: check_kmeans("cuda", bf16, "l2")),
            ("kmeans_assign cosine fp32 (16-bit screen)", "cuda", path, extra, lambda: check_kmeans("cuda", fp32, "cosine")),
            ("max_sim fp16", "cuda", path, extra, lambda: check_max_sim("cuda", fp16)),
        ]
    cases += [("project fp32 rademacher (split tf32)", "cuda", "wmma", {}, lambda: check_projection("cuda", fp32, "rademacher")),
              ("project bf16 gaussian", "cuda", "wmma", {}, lambda: check_projection("cuda", bf16, "gaussian"))]
    return cases


def _which_path(backend: str) -> str | None:
    """What the CUDA backend says a 16-bit aligned launch takes now (90, 80, 0)."""
    if backend != "cuda":
        return None
    from adaptinf_fast.backends import cuda_kernels

    ext = cuda_kernels()
    if ext is None:
        return "no CUDA kernels"
    x = torch.empty(8, 64, dtype=torch.bfloat16, device=DEVICE)
    return f"{ext.__name__.rsplit('.', 1)[-1]} pipeline_arch={ext.pipeline_arch(2, x.data_ptr(), 64, 0)}"


def smoke(out: Path, dry: bool) -> int:
    path = out / "smoke.jsonl"
    failed = 0
    for case, backend, how, extra, check in smoke_cases(dry):
        row = {"case": case, "backend": backend, "path": how, "device": DEVICE}
        t0 = time.perf_counter()
        try:
            with env(**extra):
                if backend == "cuda" and dry and "ADAPTINF_CUDA_JIT" in extra:
                    raise RuntimeError("the JIT needs CuPy and a GPU")
                row["launches"] = _which_path(backend)
                err, tol = check()
                sync()
            row.update(ok=err <= tol, error=err, tolerance=tol)
        except Exception as exc:  # noqa: BLE001 - recorded; the next case runs
            row.update(ok=False, error=None, exception=f"{type(exc).__name__}: {exc}"[:800],
                       where=traceback.format_exc(limit=-3)[-1200:])
        row["seconds"] = round(time.perf_counter() - t0, 3)
        failed += not row["ok"]
        append(path, row)
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {backend:6s} {how:28s} {case:44s} "
              f"{row.get('error') if row.get('error') is not None else row.get('exception', '')}", flush=True)
    return 1 if failed else 0


# ---- bench: headline shapes, baselines in the same process -------------------------------------

def timed(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``reps`` runs after one warm-up (device events on a GPU)."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        if DEVICE == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Bench:
    def __init__(self, out: Path, dry: bool):
        self.path, self.dry = out / "bench.jsonl", dry
        self.gemm = None

    def row(self, suite: str, method: str, fn: Callable[[], object] | None, flops: float, reps: int = 3, **extra):
        row = {"suite": suite, "method": method, "device": _device_name(), **extra}
        try:
            if fn is None:
                raise RuntimeError(extra.pop("why", "not available"))
            seconds = timed(fn, reps)
            tflops = flops / seconds / 1e12
            row.update(seconds=seconds, flops=flops, tflops=round(tflops, 3),
                       fraction_of_gemm=round(tflops / self.gemm, 4) if self.gemm and flops else None)
            if "samples" in extra:
                row["samples_per_s"] = round(extra["samples"] / seconds, 2)
        except Exception as exc:  # noqa: BLE001 - a baseline that fails is a measurement too
            row.update(seconds=None, exception=f"{type(exc).__name__}: {exc}"[:600])
        append(self.path, row)
        rate = (f"{row['samples_per_s']:8.1f} samples/s" if "samples_per_s" in row else
                f"{row.get('tflops', 0):8.2f} TFLOP/s {row.get('fraction_of_gemm') or 0:6.3f}")
        print(f"{suite:10s} {method:52s} "
              + (f"{row['seconds'] * 1e3:10.2f} ms {rate}" if row.get("seconds") else
                 f"FAILED {row.get('exception', '')[:100]}"), flush=True)
        return row


def _device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"


def bench_gemm(b: Bench) -> None:
    n = 256 if b.dry else 8192
    dtype = torch.float32 if b.dry else torch.bfloat16
    x, y = (torch.randn(n, n, device=DEVICE).to(dtype) for _ in range(2))
    row = b.row("gemm", f"torch.matmul {n}^3 {str(dtype)[6:]} (random data)", lambda: x @ y, 2.0 * n**3,
                reps=3 if b.dry else 10)
    b.gemm = row.get("tflops")


def bench_projection(b: Bench) -> None:
    import adaptinf_fast as af

    batch, p, k = (16, 4096, 256) if b.dry else (256, 1 << 26, 8192)
    flops = 2.0 * batch * p * k
    x = torch.randn(batch, p, device=DEVICE, dtype=torch.bfloat16)
    shape = {"B": batch, "P": p, "k": k, "dtype": "bf16"}
    for backend in ("triton", "cuda"):
        b.row("projection", f"adaptinf_fast.project backend={backend}",
              lambda: af.project(x, k, seed=1, backend=backend), flops, reps=2, **shape)
    chunk = 1024 if b.dry else 1 << 18

    def materialised():  # what a user without an on-the-fly kernel does: R chunks from torch's RNG
        out = torch.zeros(batch, k, device=DEVICE)
        for r0 in range(0, p, chunk):
            r = torch.randint(0, 2, (min(chunk, p - r0), k), device=DEVICE, dtype=torch.int8)
            out += (x[:, r0 : r0 + chunk] @ (2 * r - 1).to(torch.bfloat16)).float()
        return out

    b.row("projection", f"torch matmul on materialised R chunks of {chunk} rows", materialised, flops, reps=2, **shape)
    # TRAK's BasicProjector (what users without fast_jl run) regenerates its R blocks on every call:
    # timed at P/16 to fit the lease, beside ours at the same shape
    p_small = p // 16
    small = {**shape, "P": p_small}
    xs = x[:, :p_small].contiguous()
    b.row("projection", "adaptinf_fast.project backend=cuda (P/16, TRAK's shape)",
          lambda: af.project(xs, k, seed=1, backend="cuda"), flops / 16, reps=2, **small)
    try:
        from trak.projectors import BasicProjector, ProjectionType

        basic = BasicProjector(p_small, k, 0, ProjectionType.rademacher, DEVICE, dtype=torch.float16)
        b.row("projection", "trak BasicProjector (torch RNG blocks of 100 columns, fp16)",
              lambda: basic.project(xs.half(), model_id=0), flops / 16, reps=1, **small)
    except Exception as exc:  # noqa: BLE001
        b.row("projection", "trak BasicProjector (torch RNG blocks of 100 columns, fp16)", None, flops / 16,
              why=f"not available: {exc}", **small)
    try:
        import fast_jl  # noqa: F401  (TRAK's CUDA projector; carried only if built elsewhere)
        from trak.projectors import CudaProjector

        proj = CudaProjector(p, k, 0, "rademacher", DEVICE, max_batch_size=32)
        b.row("projection", "trak CudaProjector (fast_jl)", lambda: proj.project(x.half(), model_id=0), flops, reps=2, **shape)
    except Exception as exc:  # noqa: BLE001
        b.row("projection", "trak CudaProjector (fast_jl)", None, flops, why=f"not available: {exc}", **shape)
    del x


def bench_kmeans(b: Bench) -> None:
    import adaptinf_fast as af

    n, k, d, iters = (2048, 16, 64, 3) if b.dry else (1_000_000, 1024, 1024, 10)
    shape = {"N": n, "K": k, "D": d, "iterations": iters, "dtype": "bf16"}
    x = torch.randn(n, d, device=DEVICE).to(torch.bfloat16)
    c = x[torch.randperm(n, generator=_gen(7))[:k].to(DEVICE)].clone()
    assign_flops = 2.0 * n * k * d
    for backend in ("triton", "cuda"):
        b.row("kmeans", f"adaptinf_fast.kmeans_assign backend={backend} (one pass)",
              lambda: af.kmeans_assign(x, c, backend=backend), assign_flops, **shape)

    def torch_assign():
        out = []
        for r0 in range(0, n, 1 << 16):
            blk = x[r0 : r0 + (1 << 16)]
            out.append(((c.float().square().sum(1)) - 2 * (blk @ c.T).float()).argmin(1))
        return torch.cat(out)

    b.row("kmeans", "torch GEMM + argmin (one pass, 65536-row chunks)", torch_assign, assign_flops, **shape)
    fit_flops = assign_flops * iters
    b.row("kmeans", f"adaptinf_fast.KMeans fit, {iters} iterations (random init)",
          lambda: af.KMeans(k, max_iter=iters, tol=0.0, init="random", seed=0).fit(x), fit_flops, reps=2, **shape)
    baselines = {
        "flash-kmeans FlashKMeans": lambda: __import__("flash_kmeans").FlashKMeans(d, k, niter=iters, tol=-1.0).fit(x),
        "fast-pytorch-kmeans KMeans": lambda: __import__("fast_pytorch_kmeans").KMeans(
            n_clusters=k, max_iter=iters, tol=-1.0, mode="euclidean").fit_predict(x.float()),
    }
    host = None
    for name, fn in baselines.items():
        b.row("kmeans", f"{name} fit, {iters} iterations", fn if DEVICE == "cuda" else None, fit_flops, reps=2,
              **({} if DEVICE == "cuda" else {"why": "GPU only"}), **shape)
    try:
        from fastkmeans import FastKMeans

        host = x.float().cpu().numpy()  # its API takes host arrays and streams chunks to the GPU
        fk = lambda: FastKMeans(d, k, niter=iters, tol=-1.0, gpu=DEVICE == "cuda").train(host)  # noqa: E731
    except Exception as exc:  # noqa: BLE001
        fk, why = None, f"not available: {exc}"
    b.row("kmeans", f"fastkmeans FastKMeans fit, {iters} iterations (host input)", fk, fit_flops, reps=2,
          **({"why": why} if fk is None else {}), **shape)
    del x, host


def bench_maxsim(b: Bench) -> None:
    import adaptinf_fast as af

    n, d = (1500, 64) if b.dry else (200_000, 1024)
    flops = 1.0 * n * n * d  # the triangle: n^2 / 2 dot products of 2d FLOPs
    x = torch.nn.functional.normalize(torch.randn(n, d, device=DEVICE), dim=1).to(torch.float16)
    labels = torch.zeros(n, dtype=torch.int64, device=DEVICE)
    shape = {"N": n, "D": d, "clusters": 1, "dtype": "fp16"}
    for backend in ("triton", "cuda"):
        b.row("maxsim", f"adaptinf_fast.cluster_max_similarity backend={backend}",
              lambda: af.cluster_max_similarity(x, labels, backend=backend), flops, reps=2, **shape)
    block = 256 if b.dry else 8192

    def blockwise():  # SemDeDup-style without the n x n matrix: row blocks against all earlier rows
        best = torch.full((n,), -math.inf, device=DEVICE)
        for r0 in range(0, n, block):
            sims = (x[r0 : r0 + block] @ x[: r0 + block].T).float()
            rows = torch.arange(r0, min(r0 + block, n), device=DEVICE)[:, None]
            sims.masked_fill_(torch.arange(sims.shape[1], device=DEVICE)[None] >= rows, -math.inf)
            best[r0 : r0 + block] = sims.max(1).values
        return best

    b.row("maxsim", f"torch blockwise matmul ({block}-row blocks, fp16)", blockwise, flops, reps=2, **shape)


def bench_features(b: Bench) -> None:
    import adaptinf_fast as af
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if b.dry:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        batch, tokens, n, k, dtype = 4, 32, 8, 256, torch.float32
    else:  # ~1.1B parameters
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
                          num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=1024)
        batch, tokens, n, k, dtype = 16, 256, 256, 8192, torch.bfloat16
    with torch.device(DEVICE):  # built on the device: a 1.1B model's init on the CPU would cost the lease ~20 s
        base = LlamaForCausalLM(cfg).to(dtype)
    model = get_peft_model(base,
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0,
                                      init_lora_weights=False))
    ids = torch.randint(3, cfg.vocab_size, (n, tokens), generator=_gen(8))
    labels = ids.clone()
    labels[:, : tokens // 2] = -100
    rows = [{"id": i, "input_ids": ids[i], "labels": labels[i]} for i in range(n)]
    params = sum(p.numel() for p in model.parameters())
    shape = {"model_params": params, "samples": n, "tokens": tokens, "batch": batch, "out_dim": k}

    def plain():
        for r0 in range(0, n, batch):
            model(input_ids=ids[r0 : r0 + batch].to(DEVICE), labels=labels[r0 : r0 + batch].to(DEVICE)).loss.backward()
        model.zero_grad(set_to_none=True)

    floor = b.row("features", "plain forward+backward (the floor)", plain, 0.0, reps=1, **shape)
    for layers, mode in (("all", "dense"), ("all", "factored"), ("last", "dense")):
        fz = af.GradientFeaturizer(model, layers=layers, out_dim=k, mode=mode)
        row = b.row("features", f"GradientFeaturizer({layers}, {mode})",
                    lambda: fz.extract(rows, batch_size=batch, progress=False), 0.0, reps=1,
                    featurised_params=sum(p.numel() for p in fz.params), **shape)
        if row.get("seconds") and floor.get("seconds"):
            print(f"           features / plain forward+backward: {row['seconds'] / floor['seconds']:.2f}x", flush=True)


SUITES = {"gemm": bench_gemm, "projection": bench_projection, "kmeans": bench_kmeans, "maxsim": bench_maxsim,
          "features": bench_features}


def bench(out: Path, dry: bool, only: list[str] | None) -> int:
    b = Bench(out, dry)
    bench_gemm(b)
    for name, fn in SUITES.items():
        if name == "gemm" or (only and name not in only):
            continue
        try:
            fn(b)
        except Exception as exc:  # noqa: BLE001 - setup failed: recorded, the next suite runs
            append(b.path, {"suite": name, "method": "(setup)", "exception": f"{type(exc).__name__}: {exc}"[:800]})
            print(f"{name:10s} setup FAILED: {exc}", flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return 0


def ncu_target() -> int:
    """One projection at production tiles (bf16, B=256, k=8192, P=2^22) through the CUDA backend."""
    import adaptinf_fast as af

    x = torch.randn(256, 1 << 22, device=DEVICE, dtype=torch.bfloat16)
    af.project(x, 8192, seed=1, backend="cuda")
    sync()
    return 0


def summary(out: Path) -> int:
    def rows(name):
        f = out / name
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []

    smoke_rows, bench_rows = rows("smoke.jsonl"), rows("bench.jsonl")
    bad = [r for r in smoke_rows if not r.get("ok")]
    broken = [r for r in bench_rows if r.get("method") == "(setup)"]  # a suite that could not start
    print(f"\nsmoke: {len(smoke_rows) - len(bad)}/{len(smoke_rows)} ok")
    for r in bad:
        print(f"  FAIL {r['backend']} {r['path']} {r['case']}: {r.get('exception') or r.get('error')}")
    print("\nbench (median seconds, TFLOP/s, fraction of the measured bf16 GEMM rate)")
    for r in bench_rows:
        if r.get("seconds") and "samples_per_s" in r:
            print(f"  {r['suite']:10s} {r['method']:60s} {r['seconds'] * 1e3:10.2f} ms {r['samples_per_s']:8.1f} samples/s")
        elif r.get("seconds"):
            print(f"  {r['suite']:10s} {r['method']:60s} {r['seconds'] * 1e3:10.2f} ms "
                  f"{r.get('tflops') or 0:8.2f} {r.get('fraction_of_gemm') or 0:6.3f}")
        else:
            print(f"  {r['suite']:10s} {r['method']:60s} {'-':>10s}    {r.get('exception', '')[:70]}")
    for r in broken:
        print(f"  SETUP FAILED {r['suite']}: {r.get('exception')}")
    return 1 if bad or broken or not smoke_rows else 0


def main() -> int:
    a = ARGS
    if a.step == "smoke":
        return smoke(a.out, a.dry)
    if a.step == "bench":
        return bench(a.out, a.dry, a.only)
    if a.step == "ncu-target":
        return ncu_target()
    return summary(a.out)


if __name__ == "__main__":
    sys.exit(main())
