#!/usr/bin/env bash
# GPU check (issue 10): byte identity across modes on cuda, verify, and GPU speed/memory.
# One line per check; exit 1 if any check failed, 124 if the whole check ran past 8 minutes;
# "SKIP: no CUDA" and exit 0 on a machine without CUDA. See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
exec timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-470}" "$PY" -m benchmarks.gpu_check "$@"
