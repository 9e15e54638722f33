#!/usr/bin/env bash
# `make engines`, on a GPU build host with TensorRT: FLUX checkpoint -> ONNX graphs -> lint ->
# TensorRT engines -> Triton model repository (gpu target), all in one folder with manifests.
#
#   CHECKPOINT   diffusers FLUX pipeline folder (required)
#   OUT          output folder (default out/flux): graphs/, engines/, repository/
#   PROFILE      optimization-profile preset or .toml (default static-1024)
#   EXPORT_PRECISION  graph precision for `fluxbuild export` (default bf16)
#   PRECISION    TensorRT precision mode for `fluxbuild build` (default typed: the graph's types;
#                fp8 for EXPORT_PRECISION=fp8 graphs; fp32/fp16/bf16 are weak typing, TensorRT 10 only)
#   BUILDER      trtexec (default: works with any TensorRT 10/11) or native (only where the TensorRT
#                matches the headers fluxbuild's native builder was compiled against)
#   TRT_VERSION  TensorRT release the lint checks against (default: the one trtexec reports; 10.x or 11.x)
#   TIMING_CACHE TensorRT timing cache (default OUT/timing.cache with trtexec; "" for none)
#   BUILD_FLAGS  extra `fluxbuild build` flags (e.g. "--workspace 40 --builder-optimization-level 4")
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CHECKPOINT:?set CHECKPOINT to a FLUX pipeline folder (model_index.json, transformer/, text_encoder/, ...)}"
OUT=${OUT:-out/flux}
PROFILE=${PROFILE:-static-1024}
EXPORT_PRECISION=${EXPORT_PRECISION:-bf16}
PRECISION=${PRECISION:-typed}
BUILDER=${BUILDER:-trtexec}
# trtx (the native builder) does not expose TensorRT's timing cache.
[ "$BUILDER" = trtexec ] && TIMING_CACHE=${TIMING_CACHE-$OUT/timing.cache} || TIMING_CACHE=${TIMING_CACHE:-}
CARGO=${CARGO:-cargo}

$CARGO build --release --bin fluxbuild
FLUXBUILD=target/release/fluxbuild

# Fail now, before the 24 GB export, if this host cannot build engines.
if [ -z "${TRT_VERSION:-}" ]; then
  TRT_VERSION=$(scripts/tensorrt-version.sh) || { echo "make engines: no TensorRT here (see above)" >&2; exit 1; }
fi
echo "== TensorRT $TRT_VERSION, builder $BUILDER, preset $PROFILE, graphs $EXPORT_PRECISION"
if [ "${TRT_VERSION%%.*}" -ge 11 ] && [[ $PRECISION =~ ^(fp32|fp16|bf16)$ ]]; then
  echo "make engines: TensorRT $TRT_VERSION builds strongly typed only: set EXPORT_PRECISION=$PRECISION and PRECISION=typed" >&2
  exit 1
fi

$FLUXBUILD export --checkpoint "$CHECKPOINT" --out "$OUT/graphs" --force --precision "$EXPORT_PRECISION"
$FLUXBUILD lint "$OUT/graphs" --trt-version "$TRT_VERSION"
# shellcheck disable=SC2086
$FLUXBUILD build --models "$OUT/graphs" --profile "$PROFILE" --out "$OUT/engines" --precision "$PRECISION" \
  --builder "$BUILDER" ${TIMING_CACHE:+--timing-cache "$TIMING_CACHE"} ${BUILD_FLAGS:-}
$FLUXBUILD package --models "$OUT/graphs" --engines "$OUT/engines" --out "$OUT/repository" --target gpu
echo "== repository: $OUT/repository (manifests: $OUT/graphs/manifest.json, $OUT/engines/manifest.json)"
