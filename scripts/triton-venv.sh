#!/usr/bin/env bash
# Creates the pinned Triton venv (ENVIRONMENT.md, "A real Triton Inference Server on CPU"):
# the PyPI wheel nvidia-pytriton==0.7.0 bundles tritonserver 2.51.0 with the Python backend.
# The orchestrator and the CPU network models need numpy, onnxruntime (the same 1.32.0 the Rust
# side loads, so both run identical kernels) and tokenizers; tritonclient[http] is the Python
# client the tests check the Rust client against.
# Usage: scripts/triton-venv.sh [VENV_DIR]   (default .cache/triton-venv). Idempotent.
set -euo pipefail
VENV=${1:-.cache/triton-venv}
PYTHON=${PYTHON:-python3.11}   # must match one of the python backend stubs pytriton ships
source "$(dirname "$0")/venv-common.sh"
venv_start "$VENV" "the Triton venv needs Python 3.8-3.12"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  'nvidia-pytriton==0.7.0' 'numpy<2' 'onnxruntime==1.32.0' 'tokenizers==0.23.3' 'tritonclient[http]==2.73.0'
SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYVER=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
T=$SP/pytriton/tritonserver
STUB=$T/python_backend_stubs/$PYVER/triton_python_backend_stub
[[ -f "$STUB" ]] || { echo "error: pytriton has no python backend stub for Python $PYVER ($STUB)" >&2; exit 1; }
cp "$STUB" "$T/backends/python/"
"$T/bin/tritonserver" --help >/dev/null 2>&1 || true
venv_done "$VENV" "$T/bin/tritonserver"
