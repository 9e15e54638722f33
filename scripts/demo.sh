#!/usr/bin/env bash
# The whole flow on the bundled tiny FLUX.1-dev checkpoint (random weights, real tokenizers):
# inspect -> export -> lint -> local image -> Triton repository -> real Triton server -> image.
set -euo pipefail
fluxbuild=${FLUXBUILD:-target/debug/fluxbuild}
checkpoint=${CHECKPOINT:-tests/fixtures/pipeline/dev}
out=${OUT:-out/demo}
prompt=${PROMPT:-a photo of a cat}
port=${PORT:-18000}
rm -rf "$out" && mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

step "inspect $checkpoint"
$fluxbuild inspect "$checkpoint"

step "export (fp32 graphs, tokenizers, manifest)"
$fluxbuild export --checkpoint "$checkpoint" --out "$out/models"

step "lint against TensorRT 10's ONNX parser support"
$fluxbuild lint "$out/models"

step "generate locally with ONNX Runtime"
$fluxbuild generate --models "$out/models" --prompt "$prompt" --seed 42 --height 64 --width 96 --steps 4 --out "$out/local.png"

step "package a Triton model repository (cpu target)"
$fluxbuild package --models "$out/models" --out "$out/repo" --target cpu

step "serve it with a real Triton server on 127.0.0.1:$port"
$fluxbuild serve --repo "$out/repo" --http-port "$port" --pid-file "$out/triton.pid" --log "$out/triton.log"
trap 'kill "$(cat "$out/triton.pid")" 2>/dev/null || true' EXIT

step "send the prompt through Triton"
$fluxbuild generate --server "http://127.0.0.1:$port" --prompt "$prompt" --seed 42 --height 64 --width 96 --steps 4 --out "$out/triton.png"

step "compare"
if cmp -s "$out/local.png" "$out/triton.png"; then
  echo "Triton's image is byte-identical to the local one: $out/triton.png"
else
  echo "Triton's image differs from the local one" >&2
  exit 1
fi
