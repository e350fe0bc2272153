"""Print bench results as a table: case, mean time, TFLOP/s, fraction of the GEMM rate, method.

Takes pytest-benchmark's JSON or the per-case JSON lines of ``BENCH_JSONL`` (``bench/conftest.py``).
"""

from __future__ import annotations

import json
import sys


def rows(path: str) -> tuple[str, list[dict]]:
    if path.endswith(".jsonl"):
        lines = [json.loads(line) for line in open(path) if line.strip()]
        head = f"# {path}: {lines[0]['device'] if lines else 'no finished case'}"
        return head, [{"name": r["name"], "mean": r["mean"], "extra": r.get("extra_info", {})} for r in lines]
    data = json.load(open(path))
    head = (f"# {path}: {data['machine_info'].get('cpu', {}).get('brand_raw', '')} | "
            f"commit {data.get('commit_info', {}).get('id', '')[:10]}")
    return head, [{"name": b["name"], "mean": b["stats"]["mean"], "extra": b.get("extra_info", {})} for b in data["benchmarks"]]


def main(path: str) -> None:
    head, table = rows(path)
    print(head)
    print(f"{'case':<55} {'mean s':>9} {'TFLOP/s':>9} {'of GEMM':>8}  method")
    for r in table:
        e = r["extra"]
        print(f"{r['name']:<55} {r['mean']:>9.3f} {e.get('tflops', float('nan')):>9.3f} "
              f"{e.get('fraction_of_gemm', float('nan')):>8.3f}  {e.get('method', '')}")


if __name__ == "__main__":
    main(sys.argv[1])
