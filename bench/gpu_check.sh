#!/usr/bin/env bash
# One prepared check for a machine with an accelerator (under 8 minutes on one H100/H200):
#   1. bench/policy_latency.py  --device cuda --full-size   (listener latency, 8B-shaped model)
#   2. bench/loop_throughput.py --device cuda --full-size   (retrospection and SUP training)
#   3. a 2-process `accelerate launch` smoke run of training, when the machine has >= 2 GPUs
#      (skipped, with a line saying why, when accelerate is not installed)
# It needs only torch, transformers, peft (and accelerate for step 3) as installed there, plus
# this repository. Step 2 replays the recorded games through app/game/rules.py, which needs
# pydantic: where it is missing, `bench/gpu_check.sh --prepare` (run beforehand on a machine
# with pip and a network) saves its wheels (~5 MB) in bench/.wheels, which this script unpacks
# into a temporary folder (no pip, no network); without them step 2 is skipped with a message.
#
#   bench/gpu_check.sh              # on the accelerator machine; tables on stdout, log in $LOG
#   bench/gpu_check.sh --dry-run    # the same steps with tiny sizes on the CPU (CI runs it)
#   bench/gpu_check.sh --prepare    # download pydantic's wheels for Python 3.12 / x86-64
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --prepare) MODE=prepare ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  "") ;;
  *) echo "unknown option $1: use --dry-run, --prepare or nothing" >&2; exit 2 ;;
esac
WHEELS=bench/.wheels
if [ "$MODE" = prepare ]; then
  PYV=${PYV:-3.12}
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
    pydantic pydantic-core annotated-types typing-inspection || exit 1
  echo "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry that folder with the repository"
  exit 0
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOG=${LOG:-${OUT:-/tmp}/gpu_check.log}
: >"$LOG"
FAILED=0
say() { echo "== $*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS COMMAND...: run it with a time limit; a failure is reported, not fatal
  local name=$1 limit=$2; shift 2
  say "$name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "$name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || FAILED=1
}

say "gpu_check ($MODE) on $(hostname), $(date -u +%FT%TZ)"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import importlib, sys
print("python", sys.version.split()[0])
from importlib.metadata import version
for name, dist in (("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"),
                   ("accelerate", "accelerate"), ("pydantic", "pydantic"), ("rich", "rich"),
                   ("PIL", "pillow")):
    try:
        importlib.import_module(name)
        print(name, version(dist))
    except Exception as e:  # noqa: BLE001
        print(f"{name}: not available ({type(e).__name__})")
import torch
n = torch.cuda.device_count()
print("gpus", n, *(torch.cuda.get_device_name(i) for i in range(n)))
PY
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

if ! "$PY" -c "import pydantic" 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
    "$SITE" "$WHEELS"/*.whl && export PYTHONPATH="$PYTHONPATH:$SITE" && say "pydantic from $WHEELS"
fi

if [ "$MODE" = dry ]; then
  step "policy latency (tiny, cpu)" 300 "$PY" bench/policy_latency.py --device cpu \
    --concurrency 1 2 --rounds 1 --history 1 --threads 1
  if "$PY" -c "import pydantic" 2>/dev/null; then
    step "loop throughput (tiny, cpu)" 300 "$PY" bench/loop_throughput.py --device cpu \
      --actions 16 --examples 8 --batch-size 8 --micro-batch 2 --threads 1
  else
    say "loop throughput: SKIPPED (no pydantic: run bench/gpu_check.sh --prepare first)"
  fi
  PROCS=2 DEVICE=cpu
else
  step "policy latency (full size, cuda)" 240 "$PY" bench/policy_latency.py --device cuda --full-size
  if "$PY" -c "import pydantic" 2>/dev/null; then
    step "loop throughput (full size, cuda)" 240 "$PY" bench/loop_throughput.py --device cuda --full-size
  else
    say "loop throughput: SKIPPED (no pydantic: run bench/gpu_check.sh --prepare first)"
  fi
  PROCS=$GPUS DEVICE=cuda
fi

if [ "$MODE" = gpu ] && [ "$GPUS" -lt 2 ]; then
  say "accelerate smoke: SKIPPED ($GPUS GPU: needs 2)"
elif ! "$PY" -c "import accelerate" 2>/dev/null; then
  say "accelerate smoke: SKIPPED (accelerate not installed)"
else
  PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  [ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1
  step "accelerate smoke (2 processes, $DEVICE)" 240 "$PY" -m accelerate.commands.launch \
    --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    --main_process_port "$PORT" bench/train_smoke.py --device "$DEVICE"
fi
say "gpu_check ($MODE): $([ $FAILED = 0 ] && echo all steps passed || echo SOME STEPS FAILED); log $LOG"
exit $FAILED
