# Sourced by test.sh and demo.sh: create ./.venv on first use, install torch, then this package.
# EXTRAS (e.g. "[test]") selects optional dependencies. torch is installed first and pinned to
# the build this project is developed on, so nothing later pulls a multi-GB CUDA build by accident
# (override with TORCH_SPEC, e.g. TORCH_SPEC=torch on a GPU machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# The CUDA extension _C is compiled when nvcc is found (ADAPTINF_REQUIRE_CUDA=ON makes that mandatory).
python -m pip install -q -e ".${EXTRAS:-}"
