# fluxbuild. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
ORT_VERSION := 1.32.0
export ORT_DYLIB_PATH := $(CURDIR)/.cache/onnxruntime/libonnxruntime.so.$(ORT_VERSION)
CARGO ?= cargo

.PHONY: setup system-deps test
setup: system-deps $(ORT_DYLIB_PATH)

system-deps:
	bash scripts/install-system-deps.sh

$(ORT_DYLIB_PATH):
	ORT_VERSION=$(ORT_VERSION) bash scripts/fetch-onnxruntime.sh

test: setup
	$(CARGO) test --workspace

# Regenerates the parity fixtures (needs torch, diffusers, transformers: tests/fixtures/requirements.txt).
FIXTURE_PY ?= python3
.PHONY: fixtures
fixtures:
	$(FIXTURE_PY) tests/fixtures/make_fixtures.py

# On a GPU build host with TensorRT (NVIDIA's TensorRT container): FLUX pipeline -> graphs ->
# lint -> TensorRT engines -> Triton repository (gpu target), under OUT (default build/flux).
#   make engines CHECKPOINT=/models/FLUX.1-dev [PROFILE=static-1024] [BUILDER=trtexec|native]
# Knobs: scripts/make-engines.sh. gpu-check builds the tiny fixture's engines and compares them
# with ONNX Runtime (needs Python tensorrt, onnxruntime, torch).
.PHONY: engines gpu-check
engines: system-deps
	bash scripts/make-engines.sh

gpu-check: system-deps
	bash scripts/gpu-check.sh
