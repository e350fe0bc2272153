#!/usr/bin/env bash
# The GPU check, in calls that each end inside 8 minutes on a lent H100/H200 (80 GB shapes):
#
#   bash bench/gpu_check.sh tests           build _C (ADAPTINF_REQUIRE_CUDA=ON), every kernel test on CUDA tensors
#   bash bench/gpu_check.sh bench SUITE     one bench suite: projection | kmeans | dedup | features | selection | evaluate
#   bash bench/gpu_check.sh static          the static SASS check on the device's own toolchain (no GPU time used)
#
# Everything lands in $OUT (default bench/results/gpu-run): build.log, info.txt, tests.txt, and per
# suite <suite>-<device>.jsonl — one JSON line per case as soon as it finishes, so a call cut off by
# its time limit keeps what it measured — plus pytest-benchmark's <suite>-<device>.json at the end.
# A `bench` call reuses the build of an earlier call on the same machine. Wheels in .whl/ (traker,
# fast_jl sdists built elsewhere) are installed without network first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-run}
LIMIT=${LIMIT:-470}  # seconds for the whole call, build included (the device runs a command 10 minutes at most)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${1:-tests}

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if ! python3 -c "import adaptinf_fast._C" 2>/dev/null; then
  ADAPTINF_REQUIRE_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; exit 1; }
fi
adaptinf-fast info > "$OUT/info.txt" 2>&1
left=$(( LIMIT - SECONDS > 30 ? LIMIT - SECONDS : 30 ))  # what the build left of this call's time
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'cpu')")

case "$what" in
  tests)
    # every kernel (Triton and CUDA) and the featurizer on CUDA tensors against the references
    timeout "$left" python3 -m pytest -q -p no:cacheprovider tests/test_philox.py tests/test_projection.py \
      tests/test_projection_kernels.py tests/test_linear_grads.py tests/test_kmeans.py tests/test_kmeans_kernels.py \
      tests/test_dedup.py tests/test_dedup_kernels.py tests/test_features.py tests/test_cuda_pipeline.py 2>&1 | tee "$OUT/tests.txt" | tail -12
    # the same CUDA kernels compiled at first use through CuPy/NVRTC instead of _C
    left=$(( LIMIT - SECONDS > 30 ? LIMIT - SECONDS : 30 ))
    if python3 -c "import cupy" 2>/dev/null; then
      ADAPTINF_CUDA_JIT=1 timeout "$left" python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_projection_kernels.py \
        tests/test_kmeans_kernels.py tests/test_dedup_kernels.py tests/test_philox.py tests/test_cuda_pipeline.py 2>&1 | tee "$OUT/tests-jit.txt" | tail -5
    fi
    ;;
  bench)
    suite=${2:?usage: gpu_check.sh bench SUITE}
    BENCH_JSONL="$OUT/${suite}-${dev}.jsonl" timeout "$left" python3 -m pytest -q -p no:cacheprovider \
      "bench/test_${suite}_bench.py" --benchmark-json "$OUT/${suite}-${dev}.json" > "$OUT/bench-${suite}.log" 2>&1
    echo "pytest exit: $?"
    tail -5 "$OUT/bench-${suite}.log"
    python3 bench/summarize.py "$OUT/${suite}-${dev}.jsonl" 2>&1 | tail -40
    ;;
  static)
    python3 bench/static_check.py --json-dir "$OUT" > "$OUT/static.log" 2>&1; echo "static check exit: $?"
    grep -E "^(== |FAIL)" "$OUT/static.log"
    ;;
  *)
    echo "unknown step '$what': tests | bench SUITE | static"; exit 2 ;;
esac
