#!/usr/bin/env bash
# The whole flow on the bundled tiny FLUX.1-dev checkpoint (random weights, real tokenizers):
# inspect -> export -> lint -> TensorRT-RTX engines (built on CPU, no GPU) -> local image ->
# Triton repository -> real Triton server -> image.
# `make demo` builds fluxbuild and sets everything up first. The server listens on 127.0.0.1 only
# and is stopped when the script ends, also on failure or Ctrl-C.
# Knobs: FLUXBUILD (binary), CHECKPOINT, OUT (default out/demo), PROMPT, PORT (HTTP; gRPC and
# metrics on the next two), SEED, HEIGHT, WIDTH, STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
fluxbuild=${FLUXBUILD:-${CARGO_TARGET_DIR:-target}/debug/fluxbuild}
checkpoint=${CHECKPOINT:-tests/fixtures/pipeline/dev}
out=${OUT:-out/demo}
prompt=${PROMPT:-a photo of a cat}
port=${PORT:-18000}
seed=${SEED:-42}
size=(--height "${HEIGHT:-64}" --width "${WIDTH:-96}" --steps "${STEPS:-4}")
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.32.0}
pid_file=$out/triton.pid

step() { printf '\n== %s\n' "$*"; }

# Stops the server this script started (SIGTERM, SIGKILL after 30 s; then the stubs of a killed
# one). A pid file `fluxbuild stop` refuses (stale, another user's) is said and kept.
stop_server() {
  [[ -f "$pid_file" ]] || return 0
  "$fluxbuild" stop --pid-file "$pid_file" || true
}

[[ -x "$fluxbuild" ]] || { echo "error: $fluxbuild not found (run \`make demo\`, or cargo build first)" >&2; exit 1; }
stop_server   # one left behind by an interrupted earlier run
rm -rf "$out" && mkdir -p "$out"
trap 'status=$?; stop_server; [[ $status -eq 0 ]] || echo "demo failed (exit $status); server log: $out/triton.log" >&2' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "inspect $checkpoint"
"$fluxbuild" inspect "$checkpoint"

step "export: fp32 ONNX graphs, tokenizers, scheduler config, manifest.json"
"$fluxbuild" export --checkpoint "$checkpoint" --out "$out/models"

step "lint the graphs against TensorRT 10's ONNX parser support"
"$fluxbuild" lint "$out/models"

step "build TensorRT-RTX engines (ahead of time, no GPU; they run on RTX / Ampere-or-newer GPUs, not here)"
"$fluxbuild" build --runtime tensorrt-rtx --models "$out/models" --profile tiny-check --out "$out/engines"

step "generate locally with ONNX Runtime"
"$fluxbuild" generate --models "$out/models" --prompt "$prompt" --seed "$seed" "${size[@]}" --out "$out/local.png"

step "package a Triton model repository (cpu target: ONNX Runtime in Python-backend models)"
"$fluxbuild" package --models "$out/models" --out "$out/repo" --target cpu

step "start a real Triton server on 127.0.0.1:$port"
"$fluxbuild" serve --repo "$out/repo" --http-port "$port" --detach --pid-file "$pid_file" --log "$out/triton.log"

step "send the prompt through Triton"
"$fluxbuild" generate --server "http://127.0.0.1:$port" --prompt "$prompt" --seed "$seed" "${size[@]}" --out "$out/triton.png"

step "stop the server"
stop_server

step "compare"
echo "image from Triton: $out/triton.png"
echo "local image:       $out/local.png"
if cmp -s "$out/local.png" "$out/triton.png"; then
  echo "equal: Triton's PNG is byte-identical to the local one (same pixels, same settings)"
else
  echo "NOT equal: Triton's PNG differs from the local one" >&2
  exit 1
fi
