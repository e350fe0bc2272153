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
#       e. with time left, a selection round on a 1M x 8192 fp16 pool through the pool commands (pool.jsonl)
#   bash bench/gpu_check.sh rest          the full kernel test files on CUDA tensors (_C, then the JIT),
#                                         LIMIT 240 s: run it at once after the lease, on the warm machine
#                                         (no second start, _C already built), log in $OUT/rest.log
#   bash bench/gpu_check.sh pool          the 1M x 8192 selection round alone (bench/pool_scale.py)
#   bash bench/gpu_check.sh bench SUITE   one pytest-benchmark suite (bench/test_SUITE_bench.py)
#   bash bench/gpu_check.sh static        the static check on the device's own toolchain
#
# Results land in $OUT (default bench/results/gpu-run), flat, as soon as each exists: lease.log (all
# output), build.log, info.txt, smoke.jsonl, demo.txt, bench.jsonl, ncu.txt, pool.jsonl: 8 files, what a
# device call brings back (8 files, 2 folders deep). A failed build, missing wheels or a failed step
# is recorded and the call goes on (the exit status lists them); smoke and the demo stop early
# enough to leave BENCH_RESERVE (200) seconds for the benches. Wheels in .whl/ (bench/gpu_wheels.sh) are
# installed offline first. DRY=1 runs the same steps on CPU tensors (the Triton interpreter and the
# CUDA emulator, tiny shapes, no ncu): CI runs `DRY=1 bash bench/gpu_check.sh lease` so this
# script cannot rot between leases.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-run}
DRY=${DRY:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${1:-lease}
# lease: 470 s of the 10-minute call; rest: what a warm machine has left after a lease (15 min in all)
LIMIT=${LIMIT:-$([ "$what" = rest ] && echo 240 || echo 470)}
BENCH_RESERVE=${BENCH_RESERVE:-200}  # seconds the lease keeps for the headline benches
PY=${PYTHON:-python3}
dry_flag=$([ "$DRY" = 1 ] && echo --dry || true)
left() { echo $(( LIMIT - SECONDS )); }
failed_steps=()
step() {  # step NAME SECONDS CMD...: run CMD with at most SECONDS (and what the call has left)
  local name=$1 want=$2; shift 2
  [ "$want" -lt 0 ] && want=0
  local t; t=$(left); [ "$want" -lt "$t" ] && t=$want
  if [ "$t" -lt 15 ]; then echo "== $name: skipped, $(left) s left of $LIMIT"; return 0; fi
  echo "== $name (at most $t s; $(left) s left)"
  timeout --kill-after=5 "$t" "$@"; local rc=$?
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && echo "== $name: stopped at its $t s limit"
  [ $rc -ne 0 ] && { echo "== $name: exit $rc"; failed_steps+=("$name"); }
  return 0
}

if [ "$what" = lease ]; then  # one call's results: earlier rows in $OUT would be counted again
  rm -f "$OUT/lease.log" "$OUT/smoke.jsonl" "$OUT/bench.jsonl" "$OUT/demo.txt" "$OUT/ncu.txt" "$OUT/pool.jsonl"
  exec > >(tee -a "$OUT/lease.log") 2>&1
elif [ "$what" = rest ]; then  # the call's reply keeps only the last 12 KB of output: the whole log here
  rm -f "$OUT/rest.log"
  exec > >(tee -a "$OUT/rest.log") 2>&1
fi
echo "gpu_check $what: $(date -u +%FT%TZ), commit $(git describe --always --dirty 2>/dev/null || echo unknown), DRY=$DRY"

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1 && [ "$DRY" != 1 ]; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    $PY -c "import pydantic; print('== wheels installed (pydantic', pydantic.VERSION + ')')" \
      || { echo "== wheels: installed but pydantic does not import (run, demo and the pool commands will fail)"; failed_steps+=("wheels"); }
  else
    echo "== wheels: pip could not install .whl/ (see above); going on without them"; failed_steps+=("wheels")
  fi
elif [ "$DRY" != 1 ]; then
  echo "== no .whl/ carried (bash bench/gpu_wheels.sh here, then carry .whl): no pydantic, no GPU baselines"
fi
if [ "$DRY" = 1 ]; then
  $PY -c "import adaptinf_fast._cuda_emu" || { echo "DRY=1 needs the emulator built (pip install -e .)"; exit 1; }
elif ! $PY -c "import adaptinf_fast._C" 2>/dev/null; then
  echo "== build _C (sm_90a + sm_80)"
  t0=$SECONDS
  # a failed build is a result too: Triton, the CuPy/NVRTC JIT and the baselines still run without _C
  if CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) ADAPTINF_REQUIRE_CUDA=ON ADAPTINF_BUILD_EMULATOR=OFF \
      timeout 240 $PY -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
    echo "   built in $(( SECONDS - t0 )) s"
  else
    tail -30 "$OUT/build.log"
    echo "== build _C: FAILED after $(( SECONDS - t0 )) s; going on without it (the package from this tree)"
    failed_steps+=("build _C")
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
ADAPTINF="$PY -m adaptinf_fast.cli"
$ADAPTINF info > "$OUT/info.txt" 2>&1; rc=$?; echo "== info (exit $rc)"; cat "$OUT/info.txt"
[ $rc -ne 0 ] && failed_steps+=("info")
dev=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'cpu')")

case "$what" in
  lease)
    # smoke and the demo leave BENCH_RESERVE seconds for the headline benches (not in the dry run)
    keep=$([ "$DRY" = 1 ] && echo 0 || echo "$BENCH_RESERVE")
    cap() { local c=$(( $(left) - keep )); [ "$c" -lt "$1" ] && echo "$c" || echo "$1"; }
    step smoke "$(cap 150)" $PY bench/lease.py smoke --out "$OUT" $dry_flag
    demo_args=(--tasks digits --k 4 --out "${TMPDIR:-/tmp}/lease-demo" --no-progress)
    if [ "$DRY" = 1 ]; then
      demo_args+=(--device cpu --n-train 48 --n-test 16 --pretrain-epochs 2 --epochs 2 --budget 32 --pool-budget 40)
    else
      demo_args+=(--device cuda --pretrain-epochs 10 --epochs 10)
    fi
    rm -rf "${TMPDIR:-/tmp}/lease-demo"
    step "demo, one stage" "$(cap 90)" bash -c "$ADAPTINF demo ${demo_args[*]} > '$OUT/demo.txt' 2>&1; rc=\$?; tail -12 '$OUT/demo.txt'; exit \$rc"
    step bench 240 $PY bench/lease.py bench --out "$OUT" $dry_flag
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    if [ "$DRY" != 1 ] && [ -n "$NCU" ]; then
      step "ncu project_pipe" 90 bash -c "$NCU --clock-control none -k regex:adaptinf_project_pipe -c 1 \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
        $PY bench/lease.py ncu-target > '$OUT/ncu.txt' 2>&1; rc=\$?; tail -40 '$OUT/ncu.txt'; exit \$rc"
    fi
    # with time left: a selection round on a pool of 1M x 8192 fp16 features (16 GB on disk) through the
    # pool commands, wall time and peak memory per step (bench/pool_scale.py; the dry run: 2,000 x 64)
    if [ "$DRY" = 1 ]; then pool_args=(--n 2000 --d 64 --k 4); else pool_args=(--n 1000000 --d 8192 --k 100); fi
    step "pool round" 200 $PY bench/pool_scale.py "${pool_args[@]}" --scales 1 --out "$OUT/pool.jsonl" \
      --workdir "${TMPDIR:-/tmp}"
    $PY bench/lease.py summary --out "$OUT" || failed_steps+=("summary (a smoke case failed)")
    echo "gpu_check lease: done in $SECONDS s of $LIMIT; failed: ${failed_steps[*]:-none}"
    ;;
  rest)
    # every kernel (Triton and CUDA) and the featurizer on CUDA tensors against the references
    step "kernel tests (_C)" 160 $PY -m pytest -q -p no:cacheprovider tests/test_philox.py tests/test_projection.py \
      tests/test_projection_kernels.py tests/test_linear_grads.py tests/test_kmeans.py tests/test_kmeans_kernels.py \
      tests/test_dedup.py tests/test_dedup_kernels.py tests/test_features.py tests/test_cuda_pipeline.py tests/test_compat_trak.py
    # the same CUDA kernels compiled at first use through CuPy/NVRTC instead of _C
    if $PY -c "import cupy" 2>/dev/null; then
      ADAPTINF_CUDA_JIT=1 step "kernel tests (CuPy/NVRTC JIT)" 70 $PY -m pytest -q -p no:cacheprovider -k cuda \
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
  pool)  # the 1M x 8192 selection round alone (when the lease had no time left for it)
    step "pool round" 450 $PY bench/pool_scale.py --n 1000000 --d 8192 --k 100 --scales 1 --out "$OUT/pool.jsonl" \
      --workdir "${TMPDIR:-/tmp}"
    ;;
  static)
    $PY bench/static_check.py --json-dir "$OUT" > "$OUT/static.log" 2>&1; echo "static check exit: $?"
    grep -E "^(== |FAIL)" "$OUT/static.log"
    ;;
  *)
    echo "unknown step '$what': lease | rest | pool | bench SUITE | static"; exit 2 ;;
esac
[ ${#failed_steps[@]} -eq 0 ]
