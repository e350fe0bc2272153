#!/usr/bin/env bash
# Wheels the lent GPU machine's image lacks, fetched here into the git-ignored .whl/ (emptied first)
# so that they travel with the working tree (`carry: [".whl"]`; 64 MiB at most, tree included) and
# install there without network:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site
#
# The image (Python 3.12.3, torch 2.11 cu130, triton 3.6, transformers 5.17, numpy 2.5, tqdm, psutil,
# scikit-learn, matplotlib, tensorboard, cupy-cuda13x, typing-extensions, ...) has every dependency of
# these wheels except the ones carried here; nothing it has is carried (no torch, numpy, triton, tqdm).
# Every wheel is cp312 manylinux x86-64 or pure Python (py3-none-any); one version of each package.
#
#   pydantic 2.14.4           the config schema (lifelong/config.py: run, demo, merge and the pool
#                             commands; `info` and the ops do not need it). Same versions as the
#                             development venv. Requires-Dist: pydantic-core==2.50.5 (checked below),
#                             annotated-types>=0.6, typing-inspection>=0.4.4, typing-extensions>=4.16.
#   pydantic-core 2.50.5      pydantic's compiled core, the exact version pydantic pins (cp312 .so).
#   annotated-types 0.8.0     imported by pydantic at import time; no requirements.
#   typing-inspection 0.4.5   imported by pydantic at import time; needs typing-extensions>=4.15.
#   typing-extensions 4.16.0  pydantic declares >=4.16.0 and fails below 4.14.1 (no
#                             typing_extensions.Sentinel); the image's version is not known to be new
#                             enough, so it is carried (45 KiB; it shadows the image's on PYTHONPATH,
#                             and newer typing-extensions keeps the older API). WITHOUT_TYPING_EXTENSIONS=1
#                             leaves it out.
#   flash-kmeans 0.3.1        GPU k-means baseline (Triton kernels, torch fallback). Requires-Dist:
#                             torch, triton, numpy, tqdm: all in the image.
#   fastkmeans 0.5.0          GPU k-means baseline (Triton kernels). Requires-Dist: torch, numpy.
#   fast-pytorch-kmeans 0.2.2 GPU k-means baseline (plain torch). Requires-Dist: numpy, torch; it
#                             also imports psutil at import time (not declared; in the image).
#   traker 0.3.2              TRAK's projectors (bench/test_projection_bench.py and
#                             test_features_bench.py: trak.projectors.BasicProjector). PyPI has only
#                             its sdist, which is pure Python (setup.py, packages=["trak"], no
#                             extension), so it is built here into a py3-none-any wheel. Requires-Dist:
#                             torch>=2.0, numpy, tqdm (in the image); extra "tests" (assertpy,
#                             torchvision, open_clip_torch, wget, scipy, datasets, transformers) is for
#                             TRAK's own test suite and not imported by `import trak`; extra "fast" is
#                             fast_jl, imported only inside CudaProjector (below).
#
# Not carried:
#   fast_jl (TRAK's CUDA projector, test_projection_bench.py::test_fast_jl): PyPI has only an sdist
#     whose build compiles CUDA against torch; not built here (the bench skips it when absent).
#   faiss-gpu (faiss-gpu-cu12 1.14.1.post1: its cp312 wheel alone is 46 MiB, and it needs CUDA 12's
#     runtime and cuBLAS wheels, hundreds of MiB, beside the image's CUDA 13): far over the carry
#     limit. The faiss bench rows skip when faiss is absent.
#   datasets: only an input type callers may pass (a datasets.Dataset); neither the package nor the
#     benches import it (one CPU test does: tests/test_lifelong_run.py, HF-datasets input).
#
# Usage: bash bench/gpu_wheels.sh   (WHEEL_BUDGET_MIB=40 by default: the wheels' total must stay under
# it, leaving room for the tree; PYTHON=python3 by default: any Python whose pip takes --platform).
# Last, the set is installed as the device would (--no-index --no-deps) into a fresh Python 3.12 venv
# (CHECK_PYTHON, default python3.12; CHECK=0 skips), pydantic is imported and validates a model,
# and every other carried package is found there: a wheel that would not install or import on the
# device fails here, at no device time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET_MIB=${WHEEL_BUDGET_MIB:-40}
CARRY_LIMIT_MIB=64  # what travels with the tree, all of it
DEST=.whl

# NAME==VERSION downloaded as wheels; the ones built from a pure-Python sdist follow.
WHEELS=(
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  flash-kmeans==0.3.1
  fastkmeans==0.5.0
  fast-pytorch-kmeans==0.2.2
)
if [ "${WITHOUT_TYPING_EXTENSIONS:-0}" = 0 ]; then WHEELS+=(typing-extensions==4.16.0); fi
SDIST_WHEELS=(
  traker==0.3.2
)

git check-ignore -q "$DEST/" || { echo "$DEST is not git-ignored: refusing to fill it" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST"

for spec in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-cache-dir --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$spec"
done
for spec in "${SDIST_WHEELS[@]}"; do
  "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-binary "${spec%%==*}" -w "$DEST" "$spec"
done

# One wheel per package, each one for this target, pydantic-core at pydantic's pin, within budget.
"$PY" - "$DEST" "$BUDGET_MIB" "$CARRY_LIMIT_MIB" <<'EOF'
import re, subprocess, sys, zipfile
from pathlib import Path

dest, budget, limit = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
wheels = sorted(dest.glob("*.whl"))
others = [p.name for p in dest.iterdir() if p.suffix != ".whl"]
if others:
    sys.exit(f"not wheels in {dest}: {others}")
names, meta = {}, {}
for w in wheels:
    name, version, *_, py, abi, plat = w.name[:-4].split("-")
    if not ((py, abi, plat) == ("py3", "none", "any") or (py == abi == "cp312" and "manylinux" in plat and "x86_64" in plat)):
        sys.exit(f"{w.name}: neither pure Python nor cp312 manylinux x86-64")
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in names:
        sys.exit(f"two versions of {key}: {names[key]} and {w.name}")
    names[key] = w.name
    with zipfile.ZipFile(w) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    meta[key] = (version, [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("Requires-Dist:")])
pin = [r for r in meta["pydantic"][1] if r.replace(" ", "").startswith("pydantic-core==")]
core = pin[0].split("==")[1].split(";")[0].strip() if pin else None
if core != meta["pydantic-core"][0]:
    sys.exit(f"pydantic {meta['pydantic'][0]} pins {pin}, carried pydantic-core {meta['pydantic-core'][0]}")
total = 0
for key, file in names.items():
    size = (dest / file).stat().st_size
    total += size
    needs = ", ".join(r for r in meta[key][1] if "extra ==" not in r) or "-"
    print(f"{size / 2**20:7.2f} MiB  {file}\n             requires: {needs}")
print(f"{total / 2**20:7.2f} MiB  in {len(names)} wheels (budget {budget:g} MiB)")
if total > budget * 2**20:
    sys.exit(f"the wheels take {total / 2**20:.2f} MiB, over the budget of {budget:g} MiB (WHEEL_BUDGET_MIB)")
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, check=True).stdout.split(b"\0")
tree = sum(Path(f.decode()).stat().st_size for f in files if f and Path(f.decode()).is_file())
print(f"{tree / 2**20:7.2f} MiB  the working tree that travels (tracked and untracked, not ignored); {(tree + total) / 2**20:.2f} MiB travel of {limit:g} MiB")
if tree + total > limit * 2**20:
    sys.exit("tree and wheels together are over what travels to the device")
EOF

if [ "${CHECK:-1}" != 0 ]; then
  CHECK_PY=${CHECK_PYTHON:-python3.12}
  if ! "$CHECK_PY" -V > /dev/null 2>&1; then  # a pyenv shim without that version selected: take it directly
    CHECK_PY=$(ls -d "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
  fi
  "${CHECK_PY:-python3.12}" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
    || { echo "the install check needs Python 3.12 (CHECK_PYTHON=...), as on the device; CHECK=0 skips it" >&2; exit 1; }
  venv="${TMPDIR:-/tmp}/adaptinf-wheel-check"
  rm -rf "$venv"
  "$CHECK_PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$DEST"/*.whl
  "$venv/bin/python" - <<'EOF'
import importlib.util
import pydantic

class Probe(pydantic.BaseModel):
    n: int = pydantic.Field(ge=1)

assert Probe(n="3").n == 3
for mod in ("annotated_types", "typing_inspection", "typing_extensions", "flash_kmeans", "fastkmeans",
            "fast_pytorch_kmeans", "trak"):
    assert importlib.util.find_spec(mod) is not None, mod
print(f"install check: the wheels install into a fresh Python 3.12 venv with --no-index --no-deps; "
      f"pydantic {pydantic.VERSION} imports and validates")
EOF
  rm -rf "$venv"
fi

echo
echo 'carry: [".whl"]'
echo 'install on the device: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site'
