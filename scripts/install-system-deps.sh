#!/usr/bin/env bash
# Debian packages the build and tests need: libclang for trtx's bindgen step (TensorRT headers
# are vendored; no TensorRT is needed to build), unzip for the ONNX Runtime wheel.
set -euo pipefail
packages=(libclang-14-dev unzip)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
