#!/usr/bin/env bash
# Extracts libonnxruntime.so from the PyPI onnxruntime wheel (the only registry that ships it)
# into .cache/onnxruntime/. Idempotent.
set -euo pipefail
version=${ORT_VERSION:-1.32.0}
dest=.cache/onnxruntime
lib=$dest/libonnxruntime.so.$version
[ -f "$lib" ] && exit 0
mkdir -p "$dest/wheel"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d "$dest/wheel" "onnxruntime==$version"
unzip -q -o -j "$dest"/wheel/onnxruntime-"$version"-*.whl "onnxruntime/capi/libonnxruntime.so.$version" -d "$dest"
ln -sf "libonnxruntime.so.$version" "$dest/libonnxruntime.so"
rm -rf "$dest/wheel"
echo "ONNX Runtime $version: $lib"
