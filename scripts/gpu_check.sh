#!/usr/bin/env bash
# One prepared GPU check (issue 4), for a machine with one NVIDIA GPU (an H200 here):
#   1. a virtual environment (`make venv`) unless one is already there;
#   2. the CUDA-marked tests with GRADSERVE_DEVICE=cuda (executor cuda vs cpu, batch
#      invariance on the device, out-of-memory -> 507 with the server staying up);
#   3. the quick benchmark (`gradserve bench --quick`), tolerated when absent.
# Outputs (logs, junit XML, a summary) go to $OUT when set, else ./gpu-check-out.
# Each stage has its own time limit so the whole run fits in 5 minutes. The exit status
# is the CUDA tests' (or 3 when torch sees no GPU); a failed bench is reported, not fatal.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
started=$(date +%s)
note() { echo "[gpu_check +$(($(date +%s) - started))s] $*" | tee -a "$SUMMARY"; }

# pyproject's pytest timeout is 300 s per test; the stage limits below are what bind.
VENV_LIMIT_S=${VENV_LIMIT_S:-120}
TESTS_LIMIT_S=${TESTS_LIMIT_S:-110}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-50}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT_DIR/nvidia-smi.txt" 2>&1 \
  || note "nvidia-smi failed (see nvidia-smi.txt)"

if [ ! -x .venv/bin/python ]; then
  note "no .venv: make venv (up to ${VENV_LIMIT_S} s)"
  if ! timeout "$VENV_LIMIT_S" make venv >"$OUT_DIR/venv.log" 2>&1; then
    note "make venv failed or timed out (see venv.log)"
  fi
fi
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  note "no usable .venv; falling back to $(command -v python3)"
  PY=python3
fi

"$PY" - >"$OUT_DIR/torch.txt" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
EOF
note "$(tail -n 2 "$OUT_DIR/torch.txt" | tr '\n' ' ')"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  note "torch sees no CUDA device: CUDA tests would only skip; stopping"
  exit 3
fi

note "CUDA tests (up to ${TESTS_LIMIT_S} s)"
GRADSERVE_DEVICE=cuda PYTHONPATH=service timeout "$TESTS_LIMIT_S" "$PY" -m pytest -m cuda -q -rs \
  -p no:cacheprovider --junitxml="$OUT_DIR/cuda-tests.xml" tests >"$OUT_DIR/cuda-tests.log" 2>&1
tests_rc=$?
note "CUDA tests exit $tests_rc: $(tail -n 1 "$OUT_DIR/cuda-tests.log")"

if [ -x .venv/bin/gradserve ]; then
  note "bench --quick (up to ${BENCH_LIMIT_S} s)"
  GRADSERVE_DEVICE=cuda timeout "$BENCH_LIMIT_S" .venv/bin/gradserve bench --quick >"$OUT_DIR/bench.log" 2>&1
  bench_rc=$?
  note "bench exit $bench_rc (124: timed out; see bench.log)"
else
  note "no .venv/bin/gradserve: bench skipped"
fi

note "done in $(($(date +%s) - started)) s; outputs in $OUT_DIR"
exit "$tests_rc"
