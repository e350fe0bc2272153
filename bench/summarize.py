"""Print a results JSON from pytest-benchmark as a table: case, method, mean time, TFLOP/s, fraction."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    data = json.load(open(path))
    print(f"# {path}: {data['machine_info'].get('cpu', {}).get('brand_raw', '')} | commit {data.get('commit_info', {}).get('id', '')[:10]}")
    print(f"{'case':<55} {'mean s':>9} {'TFLOP/s':>9} {'of GEMM':>8}  method")
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        print(f"{b['name']:<55} {b['stats']['mean']:>9.3f} {e.get('tflops', float('nan')):>9.3f} "
              f"{e.get('fraction_of_gemm', float('nan')):>8.3f}  {e.get('method', '')}")


if __name__ == "__main__":
    main(sys.argv[1])
