#!/usr/bin/env bash
# Create .venv and install the project. With --test: also the test, model and data extras.
# PyTorch is installed as the CPU build (pinned) before anything can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "--test" ]; then
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # pinned: this machine kind keeps the CPU wheel of this version on disk for pip
    .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  fi
  .venv/bin/pip install -q -e ".[model,data,test]"
else
  .venv/bin/pip install -q -e .
fi
