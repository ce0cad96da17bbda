#!/usr/bin/env bash
# What bench/gpu_check.sh needs on a GPU machine that has torch, numpy, Pillow and typer but no
# install of this project, no pytest and no network: built here, into .gpu_kit/ (ignored by git),
# and carried there beside the working tree.
#   .gpu_kit/site    pytest and hypothesis (pure Python: any python 3.10+), for tests/train
#   .gpu_kit/mnist   a transport copy of the IDX files in VAE_DATA_DIR, when it is set (the
#                    whole-process figures need real files; it is never committed)
# gpu_check.sh puts runtime/, train/ and .gpu_kit/site on PYTHONPATH and reads .gpu_kit/mnist
# when VAE_DATA_DIR is unset there. `make clean` removes the kit.
#     VAE_DATA_DIR=/path/to/mnist bash bench/gpu_kit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.gpu_kit
rm -rf "$kit"
mkdir -p "$kit/site"
pip=${PIP:-}
if [ -z "$pip" ]; then
    if [ -x .venv/bin/python ]; then pip=".venv/bin/python -m pip"; else pip="python3 -m pip"; fi
fi
# Pure-Python wheels only (the GPU machine's python may be another version than this one's);
# exceptiongroup and tomli are what pytest needs on python 3.10 (unused on 3.11+).
$pip install -q --disable-pip-version-check --no-compile --target "$kit/site" \
    --only-binary=:all: --platform any --implementation py --abi none --python-version 3.10 \
    "pytest>=8" "hypothesis>=6" exceptiongroup tomli
if [ -n "${VAE_DATA_DIR:-}" ]; then
    mkdir -p "$kit/mnist"
    for name in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
        found=$(ls "$VAE_DATA_DIR/$name.gz" "$VAE_DATA_DIR/$name" 2>/dev/null | head -n 1 || true)
        [ -n "$found" ] || { echo "gpu_kit.sh: no $name(.gz) in $VAE_DATA_DIR" >&2; exit 2; }
        cp "$found" "$kit/mnist/"
    done
fi
du -sh "$kit" | sed 's/^/gpu kit: /'
