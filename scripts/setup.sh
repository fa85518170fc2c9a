#!/usr/bin/env bash
# Create .venv and install the project.
#   --model  also the model side (policy worker, learning loop): the pinned CPU build of PyTorch
#            first, so nothing pulls a multi-GB CUDA build, then the model and data extras
#   --test   the model side and the test extras
# Set TORCH_VERSION / TORCH_INDEX_URL to install another build (e.g. a CUDA one on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
install_torch() {
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # pinned: this machine kind keeps the CPU wheel of this version on disk for pip
    .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
}
case "${1:-}" in
  --test)
    install_torch
    .venv/bin/pip install -q -e ".[model,data,test]"
    ;;
  --model)
    install_torch
    .venv/bin/pip install -q -e ".[model,data]"
    echo "model side installed: try .venv/bin/multiref model tiny ./var/tiny-idefics2"
    ;;
  "")
    .venv/bin/pip install -q -e .
    ;;
  *)
    echo "usage: scripts/setup.sh [--model|--test]" >&2
    exit 2
    ;;
esac
