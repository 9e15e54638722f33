#!/usr/bin/env bash
# Scheduling, cancellation and admission figures (benchmark, not a test; the step scheduler beside
# step_order "concurrent", cancellation over gRPC, bad and 10 MB requests under load): the tiny FLUX.1-dev
# fixture exported, packaged for the cpu target (64x64, up to 100 steps), served by `fluxbuild
# serve` (supervised) on 127.0.0.1:$PORT, measured by scripts/bench-scheduling.py with NVIDIA's
# tritonclient; writes bench/scheduling.md. The server is stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
fluxbuild=${FLUXBUILD:-${CARGO_TARGET_DIR:-target}/debug/fluxbuild}
port=${PORT:-18300}
work=$(mktemp -d)
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.32.0}
serve_pid=
trap '[[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
"$fluxbuild" export --checkpoint tests/fixtures/pipeline/dev --out "$work/models" >/dev/null
"$fluxbuild" package --models "$work/models" --out "$work/repo" --target cpu --height 64 --width 64 \
  --max-height 128 --max-width 128 --max-steps 100 >/dev/null
"$fluxbuild" serve --repo "$work/repo" --http-port "$port" --log "$work/triton.log" >"$work/serve.out" 2>&1 &
serve_pid=$!
for _ in $(seq 600); do curl -sf "127.0.0.1:$port/v2/models/flux/ready" && break; sleep 0.5; done
mkdir -p bench
# The tritonserver `fluxbuild serve` started: the flux stubs' step table is named after it.
triton_pid=$(pgrep -P "$serve_pid" -f tritonserver)
.cache/triton-venv/bin/python scripts/bench-scheduling.py "http://127.0.0.1:$port" "127.0.0.1:$((port + 1))" \
  "$(cd "$work/repo" && pwd -P)" bench/scheduling.md "$triton_pid"
{ echo; echo "Machine load while measuring: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores."; } >>bench/scheduling.md
