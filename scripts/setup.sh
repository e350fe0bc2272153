# Sourced by test.sh and demo.sh: create ./.venv on first use, install torch, then this package.
# EXTRAS (e.g. "[test]") selects optional dependencies. torch is installed first, pinned with a
# matching torchvision: the image-text models' processors (Qwen2-VL's video processor, the fast
# image processors) need torchvision, and PyPI's torchvision does not import beside the local
# CPU-only torch 2.13 build ("operator torchvision::nms does not exist"). torch 2.14.1 +
# torchvision 0.29.1 lie on this project's development and CI machines' disks (no download; they
# run on CPU here), so nothing later pulls another multi-GB build by accident (override with
# TORCH_SPEC, e.g. TORCH_SPEC="torch torchvision" on a GPU machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -c "import torch, torchvision" 2>/dev/null || python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
# The CUDA extension _C is compiled when nvcc is found (ADAPTINF_REQUIRE_CUDA=ON makes that mandatory).
python -m pip install -q -e ".${EXTRAS:-}"
