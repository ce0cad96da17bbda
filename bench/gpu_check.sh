#!/usr/bin/env bash
# The GPU session's checks, one script (~10 minutes on an H100/H200): tests/train with a GPU
# visible (the eager-against-captured test runs on cuda there), then bench/train_gpu.py (captured
# against eager per epoch, bf16 refused, a 10-epoch process against the import-torch floor).
#     VAE_DATA_DIR=/path/to/mnist bash bench/gpu_check.sh        (from the repository root)
#     QUICK=1 bash bench/gpu_check.sh                            (the bench part in seconds)
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
if [ -z "${QUICK:-}" ]; then
    timeout 420 "$py" -m pytest -q -x -p no:cacheprovider tests/train 2>&1 | tail -n 15
    status=${PIPESTATUS[0]}
    echo "tests/train: exit $status"
fi
args=()
[ -n "${QUICK:-}" ] && args+=(--quick)
timeout 300 "$py" bench/train_gpu.py "${args[@]}" || status=$?
exit "$status"
