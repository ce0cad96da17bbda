# Two entry points on a fresh machine: `make demo` (install, train, export, generate) and
# `make test` (install; ruff, mypy; the suite with vae_runtime's coverage). Both install into
# $(VENV), torch pinned first: an unpinned torch would pull the multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
TORCH ?= torch==2.13.0

.PHONY: install test lint demo bench clean web-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[train,serve,ray,dev]'
	touch $@

install: $(VENV)/.installed

# Debian's Chromium and the pinned onnxruntime-web, for vae-web's browser tests (they skip,
# saying so, where Chromium is absent; CI runs this first and requires them).
web-deps:
	bash .ci/web-deps

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two workers, a test file each at a time: much of the suite waits on commands it runs.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile --cov=vae_runtime --cov-report=term-missing:skip-covered

demo: install
	mkdir -p $(OUT)
	$(BIN)/vae-train --out $(OUT) --force
	$(BIN)/vae-export $(OUT)/model.pt --force
	$(BIN)/vae-generate --onnx $(OUT)/decoder.onnx --out $(OUT)/generated.png
	@echo "wrote $(OUT)/model.pt, $(OUT)/encoder.onnx, $(OUT)/decoder.onnx, $(OUT)/generated.png"

bench: install
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/train_threads.py
	$(BIN)/python bench/commands.py
	$(BIN)/python bench/generate_speed.py --model $(OUT)/model.pt --decoder $(OUT)/decoder.onnx
	$(BIN)/vae-export $(OUT)/model.pt -o $(OUT)/precisions --precision fp32,int8,fp16 --force --quiet
	$(BIN)/python bench/generate_speed.py --precisions $(OUT)/precisions --methods
	$(BIN)/python bench/typer_pin.py --decoder $(OUT)/decoder.onnx
	$(BIN)/python bench/web_speed.py --onnx-dir $(OUT)
	$(BIN)/python -m pip install -q fastapi  # the reference server of serve_speed.py only
	$(BIN)/python bench/serve_speed.py --model $(OUT)/model.pt --onnx-dir $(OUT)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
