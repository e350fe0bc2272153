"""A selection round on a pool of millions through the pool commands, with wall time and peak memory
per step (the scale evidence of "pools of millions"; a benchmark, not a test).

    python bench/pool_scale.py --n 2000000 --d 256 [--k 100] [--scales 0.25 0.5 1] [--out FILE]

For each scale: synthetic fp16 features with planted near-duplicates (unit rows around K·4 skill
centres, every 10th row a near-copy of the previous one) and four scores, written as an uncompressed
``.npz`` in a streaming way (so the pool reads it through a memory map), N records as JSON lines;
then ``adaptinf-fast add``, ``features --from``, ``cluster``, ``select``, ``prune``, each in its own
process. Per step: wall seconds, the process's peak RSS (``VmRSS`` sampled every 20 ms: this
includes the feature file's pages mapped in, which the OS may drop) and its peak anonymous memory
(``RssAnon``, sampled alike: what the step allocated), and for prune Σ n_c² over the clusters (its
work). Results
are appended as JSON lines to ``--out`` (default ``bench/results/pool-scale-<device>.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_features(path: Path, n: int, d: int, k: int, seed: int = 0, block: int = 1 << 16) -> None:
    """ids, features (N, D) float16 and score_<name> as an uncompressed .npz, written block by block
    (drawn on the GPU when there is one: a 1M x 8192 pool in seconds)."""
    import torch

    rng = np.random.default_rng(seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(dev).manual_seed(seed)
    centres = torch.randn(4 * k, d, generator=gen, device=dev)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("features.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                     "fortran_order": False, "shape": (n, d)})
            for r0 in range(0, n, block):
                m = min(block, n - r0)
                pick = torch.randint(0, len(centres), (m,), generator=gen, device=dev)
                x = centres[pick] + 0.8 * torch.randn(m, d, generator=gen, device=dev)
                dup = x[0::10][: len(x[1::10])]  # every 10th row's neighbour: a near-copy of it
                x[1::10] = dup + 0.01 * torch.randn(dup.shape, generator=gen, device=dev)
                x = torch.nn.functional.normalize(x, dim=1)
                f.write(x.half().cpu().numpy().tobytes())
        for name, arr in [("ids", np.char.add("s", np.arange(n).astype(str)))] + [
                (f"score_{s}", rng.gamma(2.0, size=n).astype(np.float32)) for s in ("ppl", "el2n", "entropy", "grand")]:
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def write_records(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write('{"id": "s%d", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n' % i)


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of a running process, bytes (0, 0 once it is gone)."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, anon


BASELINE = ["-c", "import torch, adaptinf_fast.cli, adaptinf_fast.lifelong.steps"]  # what every command imports
# ADAPTINF_BENCH_TREE=DIR: run the commands from a frozen copy of the package in DIR (e.g. `git worktree
# add DIR HEAD`), ahead of an editable install, so edits to the working tree during a long run do not mix in
_TREE = os.environ.get("ADAPTINF_BENCH_TREE")
_FROM_TREE = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]; "
              f"sys.path.insert(0, {_TREE!r}); runpy.run_module('adaptinf_fast.cli', run_name='__main__')")


def run_step(argv: list[str]) -> dict:
    """Run one pool command (or ``BASELINE``); its wall time, peak RSS and peak anonymous memory."""
    t0 = time.perf_counter()
    if argv is BASELINE:
        cmd = [sys.executable, "-c", _FROM_TREE.split("; runpy")[0] + "; " + argv[1]] if _TREE else [sys.executable, *argv]
    else:
        cmd = [sys.executable, "-c", _FROM_TREE, *argv] if _TREE else [sys.executable, "-m", "adaptinf_fast.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]  # sampled after exec: ru_maxrss would also count the pages the child had before it
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            rss, anon = _memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
            stop.wait(0.02)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    _, status, _ = os.wait4(proc.pid, 0)
    stop.set()
    th.join()
    seconds = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{err[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss": peak[0], "peak_anon": peak[1],
            "output": out.strip().splitlines()[-1] if out.strip() else ""}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} threads, {platform.processor() or platform.machine()})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="where the pool and data go (default: a temp folder)")
    args = ap.parse_args(argv)
    device = device_name()
    out = args.out or ROOT / "bench" / "results" / f"pool-scale-{'gpu' if 'cpu' not in device else 'cpu'}.jsonl"
    commit = subprocess.run(["git", "-C", _TREE or str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or None
    for scale in args.scales:
        n = int(args.n * scale)
        work = Path(tempfile.mkdtemp(dir=args.workdir))
        try:
            t0 = time.perf_counter()
            write_features(work / "features.npz", n, args.d, args.k)
            write_records(work / "data.jsonl", n)
            print(f"N={n:,} D={args.d}: data written in {time.perf_counter() - t0:.1f} s", flush=True)
            pool = str(work / "pool")
            steps = {
                "imports only (baseline)": BASELINE,
                "add": ["add", "--pool", pool, "--data", str(work / "data.jsonl"), "--source", "synthetic"],
                "features": ["features", "--pool", pool, "--from", str(work / "features.npz")],
                "cluster": ["cluster", "--pool", pool, "--k", str(args.k)],
                "select": ["select", "--pool", pool, "--budget", str(max(1, n // 20))],
                "prune": ["prune", "--pool", pool, "--pool-budget", str(int(n * 0.9))],
                "status": ["status", "--pool", pool],
            }
            for step, cmd in steps.items():
                res = run_step(cmd)
                row = {"N": n, "D": args.d, "K": args.k, "step": step, "device": device, "commit": commit,
                       "features_bytes": n * args.d * 2, **res}
                if step == "cluster":
                    info = json.loads(res["output"])["cluster"]
                    sizes = info["sizes"]
                    sum_sq = sum(s * s for s in sizes)
                    row.update(largest_cluster=max(sizes), sum_sq_cluster=sum_sq, n_iter=info.get("n_iter"))
                if step == "prune":
                    row["sum_sq_cluster"] = sum_sq
                row.pop("output")
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"  {step:24s} {res['seconds']:9.1f} s   peak RSS {res['peak_rss'] / 2**20:8.0f} MiB   "
                      f"peak anonymous {res['peak_anon'] / 2**20:8.0f} MiB", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
