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

# Export benchmark (not a test): full-size synthetic checkpoint -> ONNX vs a plain copy; writes bench/export.md.
.PHONY: bench-export
bench-export:
	bash scripts/bench-export.sh
