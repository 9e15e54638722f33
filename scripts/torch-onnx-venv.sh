#!/usr/bin/env bash
# The reference exporter for `make bench-slice`: torch.onnx (dynamo) with diffusers' own
# FluxTransformer2DModel, all from PyPI, pinned. torch itself comes from the torch site folder
# (`make torch-site`, put on PYTHONPATH by the caller), so this venv stays small.
# Usage: scripts/torch-onnx-venv.sh [VENV_DIR]   (default .cache/torch-onnx-venv). Idempotent.
set -euo pipefail
VENV=${1:-.cache/torch-onnx-venv}
PYTHON=${PYTHON:-python3.11}
source "$(dirname "$0")/venv-common.sh"
venv_start "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check 'diffusers==0.42.1' 'onnx==1.23.2' \
  'onnxscript==0.7.2' 'safetensors==0.8.0' 'numpy==2.4.6'
"$VENV/bin/python" -c 'import diffusers, onnx, onnxscript, safetensors'
venv_done "$VENV"
