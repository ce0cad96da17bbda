#!/usr/bin/env bash
# The GPU session's checks, one script (minutes on an H100/H200): tests/train with a GPU
# visible (the eager-against-captured test runs on cuda there), then bench/train_gpu.py (captured
# against eager per epoch, bf16 refused, a 10-epoch process against the import-torch floor).
# It fits one 10-minute device call: the tests get 300 s, the bench 240 s.
#     VAE_DATA_DIR=/path/to/mnist bash bench/gpu_check.sh        (from the repository root)
#     QUICK=1 bash bench/gpu_check.sh                            (the bench part in seconds)
#     DEVICE=cpu bash bench/gpu_check.sh                         (a dry run without a GPU)
# On a machine without this project installed (torch, numpy, Pillow and typer are enough), build
# the kit first where pip works (bench/gpu_kit.sh) and carry .gpu_kit/ along: this script puts
# the sources and the kit on PYTHONPATH, and reads .gpu_kit/mnist when VAE_DATA_DIR is unset.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=$(command -v python || command -v python3)
export PYTHONPATH="$PWD/runtime:$PWD/train${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu_kit/site ] && PYTHONPATH="$PYTHONPATH:$PWD/.gpu_kit/site"
if [ -z "${VAE_DATA_DIR:-}" ] && [ -d .gpu_kit/mnist ]; then
    export VAE_DATA_DIR="$PWD/.gpu_kit/mnist"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
if [ -z "${QUICK:-}" ]; then
    timeout 300 "$py" -m pytest -q -x -p no:cacheprovider tests/train 2>&1 | tail -n 15
    status=${PIPESTATUS[0]}
    echo "tests/train: exit $status"
fi
args=(--device "${DEVICE:-cuda}")
[ -n "${QUICK:-}" ] && args+=(--quick)
timeout 240 "$py" bench/train_gpu.py "${args[@]}" || status=$?
exit "$status"
