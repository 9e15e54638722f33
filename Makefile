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

test: setup triton-venv
	$(CARGO) test --workspace

# Regenerates the parity fixtures (needs torch, diffusers, transformers: tests/fixtures/requirements.txt).
FIXTURE_PY ?= python3
.PHONY: fixtures
fixtures:
	$(FIXTURE_PY) tests/fixtures/make_fixtures.py

# ---- Triton (CPU server from the pinned PyPI wheel) ----------------------------------------
TRITON_VENV := $(CURDIR)/.cache/triton-venv
.PHONY: triton-venv serve test-triton
triton-venv: $(TRITON_VENV)/.complete
$(TRITON_VENV)/.complete: scripts/triton-venv.sh
	bash scripts/triton-venv.sh $(TRITON_VENV)

# make serve REPO=out/repo [PORT=8000]
REPO ?= out/repo
PORT ?= 8000
serve: triton-venv
	$(CARGO) run --release -- serve --repo $(REPO) --http-port $(PORT) --grpc-port $$(($(PORT)+1)) --metrics-port $$(($(PORT)+2))

test-triton: setup triton-venv
	$(CARGO) test --test triton_serving --test triton_configs
