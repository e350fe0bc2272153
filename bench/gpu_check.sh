#!/usr/bin/env bash
# The GPU check, sized for one lease of the H100/H200 machine (15 minutes in all, its 1-2 minute start
# included; one command at most 10 minutes; nothing can be downloaded there):
#
#   bash bench/gpu_check.sh lease         THE call: <= 8 minutes wall, build included (LIMIT, seconds)
#       a. build _C (sm_90a + sm_80, ADAPTINF_REQUIRE_CUDA=ON, no emulator), adaptinf-fast info
#       b. smoke: one small case per kernel x backend x path against reference.py (Triton projection
#          bf16 / fp32 split / Gaussian, k-means, max-sim, featurizer; CUDA wgmma and mma.sync
#          pipelines, WMMA kernels, the CuPy/NVRTC JIT), then the demo for one stage on CUDA
#       c. headline benches at production shapes, baselines in the same process, the bf16 GEMM rate
#          measured first (bench/lease.py bench)
#       d. with time left, ncu over the wgmma projection (shared-store bank conflicts, tensor pipe)
#   bash bench/gpu_check.sh rest          the full kernel test files on CUDA tensors (_C, then the JIT)
#   bash bench/gpu_check.sh bench SUITE   one pytest-benchmark suite (bench/test_SUITE_bench.py)
#   bash bench/gpu_check.sh static        the static check on the device's own toolchain
#
# Results land in $OUT (default bench/results/gpu-run), flat, as soon as each exists: lease.log (all
# output), build.log, info.txt, smoke.jsonl, demo.txt, bench.jsonl, ncu.txt: 7 files, within what a
# device call brings back (8 files, 2 folders deep). Wheels in .whl/ (bench/gpu_wheels.sh) are
# installed offline first. DRY=1 runs the same steps on CPU tensors (the Triton interpreter and the
# CUDA emulator, tiny shapes, no ncu): CI runs `DRY=1 bash bench/gpu_check.sh lease` so this
# script cannot rot between leases.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-run}
LIMIT=${LIMIT:-470}
DRY=${DRY:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${1:-lease}
PY=${PYTHON:-python3}
dry_flag=$([ "$DRY" = 1 ] && echo --dry || true)
left() { echo $(( LIMIT - SECONDS )); }
failed_steps=()
step() {  # step NAME SECONDS CMD...: run CMD with at most SECONDS (and what the call has left)
  local name=$1 want=$2; shift 2
  local t; t=$(left); [ "$want" -lt "$t" ] && t=$want
  if [ "$t" -lt 15 ]; then echo "== $name: skipped, $(left) s left of $LIMIT"; return 0; fi
  echo "== $name (at most $t s; $(left) s left)"
  timeout --kill-after=5 "$t" "$@"; local rc=$?
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && echo "== $name: stopped at its $t s limit"
  [ $rc -ne 0 ] && { echo "== $name: exit $rc"; failed_steps+=("$name"); }
  return 0
}

if [ "$what" = lease ]; then  # one call's results: earlier rows in $OUT would be counted again
  rm -f "$OUT/lease.log" "$OUT/smoke.jsonl" "$OUT/bench.jsonl" "$OUT/demo.txt" "$OUT/ncu.txt"
  exec > >(tee -a "$OUT/lease.log") 2>&1
fi
echo "gpu_check $what: $(date -u +%FT%TZ), commit $(git describe --always --dirty 2>/dev/null || echo unknown), DRY=$DRY"

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1 && [ "$DRY" != 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$DRY" = 1 ]; then
  $PY -c "import adaptinf_fast._cuda_emu" || { echo "DRY=1 needs the emulator built (pip install -e .)"; exit 1; }
elif ! $PY -c "import adaptinf_fast._C" 2>/dev/null; then
  echo "== build _C (sm_90a + sm_80)"
  t0=$SECONDS
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) ADAPTINF_REQUIRE_CUDA=ON ADAPTINF_BUILD_EMULATOR=OFF \
    timeout 240 $PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; exit 1; }
  echo "   built in $(( SECONDS - t0 )) s"
fi
ADAPTINF="$PY -m adaptinf_fast.cli"
$ADAPTINF info > "$OUT/info.txt" 2>&1; echo "== info (exit $?)"; cat "$OUT/info.txt"
dev=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'cpu')")

case "$what" in
  lease)
    step smoke 150 $PY bench/lease.py smoke --out "$OUT" $dry_flag
    demo_args=(--tasks digits --k 4 --out "${TMPDIR:-/tmp}/lease-demo" --no-progress)
    if [ "$DRY" = 1 ]; then
      demo_args+=(--device cpu --n-train 48 --n-test 16 --pretrain-epochs 2 --epochs 2 --budget 32 --pool-budget 40)
    else
      demo_args+=(--device cuda --pretrain-epochs 10 --epochs 10)
    fi
    rm -rf "${TMPDIR:-/tmp}/lease-demo"
    step "demo, one stage" 90 bash -c "$ADAPTINF demo ${demo_args[*]} > '$OUT/demo.txt' 2>&1; rc=\$?; tail -12 '$OUT/demo.txt'; exit \$rc"
    step bench 240 $PY bench/lease.py bench --out "$OUT" $dry_flag
    if [ "$DRY" != 1 ] && command -v ncu > /dev/null; then
      step "ncu project_pipe" 90 bash -c "ncu --clock-control none -k regex:adaptinf_project_pipe -c 1 \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
        $PY bench/lease.py ncu-target > '$OUT/ncu.txt' 2>&1; rc=\$?; tail -40 '$OUT/ncu.txt'; exit \$rc"
    fi
    $PY bench/lease.py summary --out "$OUT" || failed_steps+=("summary (a smoke case failed)")
    echo "gpu_check lease: done in $SECONDS s of $LIMIT; failed: ${failed_steps[*]:-none}"
    ;;
  rest)
    # every kernel (Triton and CUDA) and the featurizer on CUDA tensors against the references
    step "kernel tests (_C)" 330 $PY -m pytest -q -p no:cacheprovider tests/test_philox.py tests/test_projection.py \
      tests/test_projection_kernels.py tests/test_linear_grads.py tests/test_kmeans.py tests/test_kmeans_kernels.py \
      tests/test_dedup.py tests/test_dedup_kernels.py tests/test_features.py tests/test_cuda_pipeline.py tests/test_compat_trak.py
    # the same CUDA kernels compiled at first use through CuPy/NVRTC instead of _C
    if $PY -c "import cupy" 2>/dev/null; then
      ADAPTINF_CUDA_JIT=1 step "kernel tests (CuPy/NVRTC JIT)" 200 $PY -m pytest -q -p no:cacheprovider -k cuda \
        tests/test_projection_kernels.py tests/test_kmeans_kernels.py tests/test_dedup_kernels.py tests/test_philox.py \
        tests/test_cuda_pipeline.py
    fi
    ;;
  bench)
    suite=${2:?usage: gpu_check.sh bench SUITE}
    BENCH_JSONL="$OUT/${suite}-${dev}.jsonl" step "bench $suite" 420 $PY -m pytest -q -p no:cacheprovider \
      "bench/test_${suite}_bench.py" --benchmark-json "$OUT/${suite}-${dev}.json"
    $PY bench/summarize.py "$OUT/${suite}-${dev}.jsonl" 2>&1 | tail -40
    ;;
  static)
    $PY bench/static_check.py --json-dir "$OUT" > "$OUT/static.log" 2>&1; echo "static check exit: $?"
    grep -E "^(== |FAIL)" "$OUT/static.log"
    ;;
  *)
    echo "unknown step '$what': lease | rest | bench SUITE | static"; exit 2 ;;
esac
[ ${#failed_steps[@]} -eq 0 ]
