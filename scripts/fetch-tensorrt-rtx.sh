#!/usr/bin/env bash
# Extracts the TensorRT-RTX 1.7 builder and ONNX parser libraries from the PyPI wheel
# onnxruntime-ep-nv-tensorrt-rtx-cu13 (the only registry that ships them) into .cache/tensorrt-rtx/.
# They need only glibc and libstdc++ to load; CUDA is loaded lazily and only to run engines, so
# `fluxbuild build --runtime tensorrt-rtx` builds engines ahead of time on a machine without a GPU.
# Idempotent.
set -euo pipefail
wheel_version=${TRT_RTX_WHEEL_VERSION:-0.5.0}
trt_rtx_version=${TRT_RTX_VERSION:-1.7.1}
dest=${TRT_RTX_DIR:-.cache/tensorrt-rtx}
libs=(libtensorrt_rtx.so libtensorrt_onnxparser_rtx.so)
complete=1
for lib in "${libs[@]}"; do [ -f "$dest/$lib.$trt_rtx_version" ] || complete=0; done
[ $complete -eq 1 ] && exit 0
mkdir -p "$dest"
# A private download folder, so two set-ups at once never read each other's half-written wheel.
wheel_dir=$(mktemp -d "$dest/wheel.XXXXXX")
trap 'rm -rf "$wheel_dir"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d "$wheel_dir" "onnxruntime-ep-nv-tensorrt-rtx-cu13==$wheel_version"
wheel=$(ls "$wheel_dir"/onnxruntime_ep_nv_tensorrt_rtx_cu13-"$wheel_version"-*.whl)
for lib in "${libs[@]}"; do
  unzip -q -o -j "$wheel" "onnxruntime_ep_nv_tensorrt_rtx/$lib.$trt_rtx_version" -d "$wheel_dir"
  # Rename into place last: a killed set-up leaves no half-written library that looks complete.
  mv -f "$wheel_dir/$lib.$trt_rtx_version" "$dest/$lib.$trt_rtx_version"
  ln -sfn "$lib.$trt_rtx_version" "$dest/$lib.1"
  ln -sfn "$lib.1" "$dest/$lib"
done
echo "TensorRT-RTX $trt_rtx_version (wheel onnxruntime-ep-nv-tensorrt-rtx-cu13==$wheel_version): $dest"
