# Two entry points on a fresh machine: `make demo` (install, train, export, generate) and
# `make test` (install; ruff, mypy; the suite with vae_runtime's coverage). Both install into
# $(VENV), torch pinned first: an unpinned torch would pull the multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
TORCH ?= torch==2.13.0

.PHONY: install test lint demo bench clean web-deps web-deps-if-possible

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

PIP := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar off

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "== install 1/2: $(TORCH), the CPU build (first time: ~1 min)"
	$(PIP) $(TORCH)
	@echo "== install 2/2: mnist-vae and its extras (first time: ~2 min, ~600 MB with Ray)"
	$(PIP) -e '.[train,serve,ray,dev,docs]'
	$(BIN)/python -c "import torch, vae_runtime, vae_train, vae_export, vae_serve, vae_web"
	touch $@

install: $(VENV)/.installed

# Debian's Chromium and the pinned onnxruntime-web, for vae-web's browser tests. `make test`
# installs them where it can (root with apt for Chromium; npm ci for onnxruntime-web); where it
# cannot, the browser tests skip with one line saying so. CI requires them.
web-deps:
	bash .ci/web-deps

web-deps-if-possible:
	@bash .ci/web-deps || echo "== web-deps: not installed here; the browser tests will skip (make web-deps as root installs them)"

lint: install
	@echo "== lint: ruff, mypy, import contracts (lint-imports), dependencies (deptry)"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/deptry .
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

# Two workers, a test file each at a time: much of the suite waits on commands it runs.
test: lint web-deps-if-possible
	@echo "== tests: two workers"
	$(BIN)/pytest -n 2 --dist loadfile --cov=vae_runtime --cov-report=term-missing:skip-covered

# The three commands as README runs them, each announced; --force: a second `make demo` replaces
# the first one's files.
demo: install
	@echo "== demo 1/3: vae-train (10 epochs; a line per epoch)"
	$(BIN)/vae-train --out $(OUT) --force
	@echo "== demo 2/3: vae-export"
	$(BIN)/vae-export $(OUT)/model.pt --force
	@echo "== demo 3/3: vae-generate (torch-free)"
	$(BIN)/vae-generate --onnx $(OUT)/decoder.onnx --out $(OUT)/generated.png --force
	@echo "wrote $(OUT)/model.pt, $(OUT)/encoder.onnx, $(OUT)/decoder.onnx, $(OUT)/generated.png"

# Every table of docs/benchmarks.md, after `make demo` wrote $(OUT)/ (on real MNIST when
# VAE_DATA_DIR is set), the machine block first; a quiet machine, about 37 minutes (KServe's venv
# for serve_peers.py is installed on first use, ~530 MB)
# (docs/benchmarks.md#how-we-measure). `make bench QUICK=1`: each script's tiny setting, a check.
BENCH_Q := $(if $(QUICK),--quick)
BENCH_DATA := $(if $(VAE_DATA_DIR),--data-dir $(VAE_DATA_DIR))
bench: install
	@test -f $(OUT)/model.pt -a -f $(OUT)/decoder.onnx || { echo "make bench: run make demo first (it writes $(OUT)/)"; exit 2; }
	$(BIN)/python bench/measure.py
	$(BIN)/python bench/train_speed.py $(BENCH_Q)
	$(BIN)/python bench/train_profile.py $(BENCH_Q)
	$(if $(VAE_DATA_DIR),$(BIN)/python bench/train_threads.py --all $(BENCH_Q),@echo "== train_threads.py skipped: set VAE_DATA_DIR")
	$(if $(VAE_DATA_DIR),$(BIN)/python bench/commands.py $(BENCH_Q),@echo "== commands.py skipped: set VAE_DATA_DIR")
	$(BIN)/python bench/generate_speed.py --model $(OUT)/model.pt --decoder $(OUT)/decoder.onnx $(BENCH_Q)
	$(BIN)/vae-export $(OUT)/model.pt -o $(OUT)/precisions --precision fp32,int8,fp16 --force --quiet
	$(BIN)/python bench/generate_speed.py --precisions $(OUT)/precisions $(BENCH_DATA) --methods $(BENCH_Q)
	$(BIN)/python bench/typer_pin.py --decoder $(OUT)/decoder.onnx $(BENCH_Q)
	$(BIN)/python bench/web_speed.py --onnx-dir $(OUT) $(BENCH_Q)
	$(BIN)/python bench/web_speed.py --onnx-dir $(OUT) --no-isolate $(BENCH_Q)
	$(if $(VAE_DATA_DIR),$(BIN)/python bench/score_quality.py --onnx-dir $(OUT) --out $(OUT)/score_quality.png $(BENCH_Q),@echo "== score_quality.py skipped: set VAE_DATA_DIR")
	$(BIN)/python bench/score_speed.py --onnx-dir $(OUT) --model $(OUT)/model.pt $(BENCH_DATA) $(BENCH_Q)
	$(BIN)/python bench/score_speed.py --onnx-dir $(OUT) --turns $(BENCH_DATA) $(BENCH_Q)
	$(if $(VAE_DATA_DIR),$(BIN)/python bench/score_speed.py --onnx-dir $(OUT) --ray $(BENCH_Q),@echo "== score_speed.py --ray skipped: set VAE_DATA_DIR")
	$(BIN)/python -m pip install -q fastapi  # the reference server of the serving benches only
	$(BIN)/python bench/serve_peers.py --model $(OUT)/model.pt --onnx-dir $(OUT) --grpc --swap $(BENCH_Q)
	$(BIN)/python bench/serve_speed.py --model $(OUT)/model.pt --onnx-dir $(OUT) $(BENCH_Q)
	$(BIN)/python bench/serve_speed.py --cluster --model $(OUT)/model.pt --onnx-dir $(OUT) $(BENCH_Q)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache .gpu_kit
