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

# The README demo on the bundled tiny FLUX.1-dev checkpoint: inspect, export, lint, a local image,
# a cpu Triton repository, a real Triton server on 127.0.0.1:$(DEMO_PORT), the image through it
# (out/demo/triton.png), the server stopped, and whether it equals the local one.
DEMO_PORT ?= 18000
.PHONY: demo
demo: setup triton-venv
	$(CARGO) build --bin fluxbuild
	PORT=$(DEMO_PORT) bash scripts/demo.sh

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

# On a GPU build host with TensorRT (NVIDIA's TensorRT container): FLUX pipeline -> graphs ->
# lint -> TensorRT engines -> Triton repository (gpu target), under OUT (default out/flux).
#   make engines CHECKPOINT=/models/FLUX.1-dev [PROFILE=static-1024] [BUILDER=trtexec|native]
# Knobs: scripts/make-engines.sh. gpu-check builds the tiny fixture's engines and compares them
# with ONNX Runtime (needs Python tensorrt, onnxruntime, torch).
.PHONY: engines gpu-check
engines: system-deps
	bash scripts/make-engines.sh

gpu-check: system-deps
	bash scripts/gpu-check.sh

# Export benchmark (not a test): full-size synthetic checkpoint -> ONNX vs a plain copy; writes bench/export.md.
.PHONY: bench-export
bench-export:
	bash scripts/bench-export.sh

# Scheduling, cancellation and admission of a served deployment (not a test): bench/scheduling.md.
.PHONY: bench-scheduling
bench-scheduling: setup triton-venv
	$(CARGO) build --bin fluxbuild
	bash scripts/bench-scheduling.sh

# Benchmarks (not tests): reports under bench/.
.PHONY: bench
bench: bench-export

# Accuracy report (not a test): fp16/bf16/fp8 against fp32, per network and end to end, on the tiny
# fixture pipelines in ONNX Runtime (CPU); writes bench/accuracy.md and bench/accuracy.json.
.PHONY: accuracy
accuracy: $(ORT_DYLIB_PATH)
	$(CARGO) run -- accuracy --checkpoint tests/fixtures/pipeline/dev --checkpoint tests/fixtures/pipeline/schnell --out bench
