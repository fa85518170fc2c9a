#!/usr/bin/env bash
# Install (first time) and start the server on http://127.0.0.1:8000 with a SQLite file in ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/multiref serve "$@"
