#!/usr/bin/env bash
# Installs PyPI torch (the CUDA wheel; it runs on CPU) into a folder of its own, for the Python
# interpreter of the Triton venv: the test that serves the orchestrator's torch code path (the gpu
# target's) on CPU torch puts it on the server's PYTHONPATH. Kept out of the Triton venv so that
# every other server runs without it. About 5.8 GB and 100 s: refused when the disk lacks room.
# Usage: scripts/torch-site.sh TRITON_VENV [DIR]   (default .cache/torch-site). Idempotent.
set -euo pipefail
VENV=${1:?usage: scripts/torch-site.sh TRITON_VENV [DIR]}
DIR=${2:-.cache/torch-site}
TORCH_VERSION=2.15.0
NEED_GB=8   # the unpacked install plus pip's unpacking room
if [[ -f "$DIR/.complete" ]]; then
  echo "$DIR is ready"; exit 0
fi
mkdir -p "$(dirname "$DIR")"
free_gb=$(( $(df --output=avail -k "$(dirname "$DIR")" | tail -1) / 1024 / 1024 ))
if (( free_gb < NEED_GB )); then
  echo "error: torch $TORCH_VERSION needs about $NEED_GB GB in $(dirname "$DIR"), $free_gb GB free" >&2; exit 1
fi
rm -rf "$DIR"   # an unfinished install is redone
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --target "$DIR" "torch==$TORCH_VERSION"
"$VENV/bin/python" -c "import sys; sys.path.insert(0, '$DIR'); import torch; print('torch', torch.__version__)"
touch "$DIR/.complete"
echo "$DIR is ready"
