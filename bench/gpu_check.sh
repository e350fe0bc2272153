#!/usr/bin/env bash
# One call on a lent GPU machine: build _C for its Python, run every kernel test on CUDA tensors,
# then the benchmarks; everything lands in $OUT (results JSON stamped with the device by
# pytest-benchmark's machine info plus our extra_info). Usage there:
#   bash bench/gpu_check.sh [suite ...]   (default: projection kmeans dedup features selection;
#                                          optionally with .whl carried for traker / fast-jl sdists)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
adaptinf-fast info | tee "$OUT/info.txt"
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
# every kernel (Triton and CUDA) on CUDA tensors against the references
python3 -m pytest -q tests/test_philox.py tests/test_projection.py tests/test_projection_kernels.py \
  tests/test_linear_grads.py tests/test_kmeans.py tests/test_kmeans_kernels.py tests/test_dedup.py \
  tests/test_dedup_kernels.py tests/test_features.py 2>&1 | tee "$OUT/tests.txt" | tail -8
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(projection kmeans dedup features selection)
for suite in "${suites[@]}"; do
  python3 -m pytest -q "bench/test_${suite}_bench.py" -p no:cacheprovider \
    --benchmark-json "$OUT/${suite}-${dev}.json" > "$OUT/bench-${suite}.log" 2>&1
  python3 bench/summarize.py "$OUT/${suite}-${dev}.json" 2>/dev/null | tail -25
done
