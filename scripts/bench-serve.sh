#!/usr/bin/env bash
# Serving benchmark (not a test): the tiny FLUX.1-dev fixture exported and packaged for the cpu
# target, a real Triton server (the pinned PyPI build) on 127.0.0.1, perf_analyzer driving `flux`
# at concurrency 1, 4 and 8 with the input-data file `fluxbuild perf-data` writes, and local
# `fluxbuild generate` (ONNX Runtime, the same graphs) on the same prompts and settings: latency
# percentiles, throughput and their ratios in bench/serve.md (raw numbers in bench/serve.json).
# `make bench-serve` builds fluxbuild (release) and installs perf_analyzer first.
# Knobs: FLUXBUILD, OUT (default out/bench-serve), PORT (HTTP; gRPC and metrics on the next two),
# HEIGHT, WIDTH, STEPS, PROMPTS (how many of profiles/calibration-prompts.txt), REQUESTS (measured per concurrency, after
# one warm-up request per concurrent client).
set -euo pipefail
cd "$(dirname "$0")/.."
fluxbuild=${FLUXBUILD:-${CARGO_TARGET_DIR:-target}/release/fluxbuild}
perf_analyzer=${PERF_ANALYZER:-.cache/perf-analyzer/perf_analyzer}
out=${OUT:-out/bench-serve}
port=${PORT:-18100}
height=${HEIGHT:-64} width=${WIDTH:-96} steps=${STEPS:-4} seed=42
prompt_count=${PROMPTS:-8}
requests=${REQUESTS:-32}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.32.0}
pid_file=$out/triton.pid

step() { printf '\n== %s\n' "$*"; }
# Stops the server this script started (SIGTERM, SIGKILL after 30 s; then the stubs of a killed
# one). A pid file `fluxbuild stop` refuses (stale, another user's) is said and kept.
stop_server() {
  [[ -f "$pid_file" ]] || return 0
  "$fluxbuild" stop --pid-file "$pid_file" || true
}

[[ -x "$fluxbuild" ]] || { echo "error: $fluxbuild not found (make bench-serve builds it)" >&2; exit 1; }
[[ -x "$perf_analyzer" ]] || { echo "error: $perf_analyzer not found (scripts/perf-analyzer.sh)" >&2; exit 1; }
stop_server
rm -rf "$out" && mkdir -p "$out/local"
trap 'status=$?; stop_server; [[ $status -eq 0 ]] || echo "bench-serve failed (exit $status); server log: $out/triton.log" >&2' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mapfile -t prompts < <(grep -v -e '^#' -e '^[[:space:]]*$' profiles/calibration-prompts.txt | head -n "$prompt_count")
prompt_args=()
for p in "${prompts[@]}"; do prompt_args+=(--prompt "$p"); done
size=(--height "$height" --width "$width" --steps "$steps")

step "export + package the tiny FLUX.1-dev fixture (cpu target)"
"$fluxbuild" export --checkpoint tests/fixtures/pipeline/dev --out "$out/models" >/dev/null
"$fluxbuild" package --models "$out/models" --out "$out/repo" --target cpu --height "$height" --width "$width" --steps "$steps"

step "perf_analyzer's input data (${#prompts[@]} requests)"
"$fluxbuild" perf-data --repo "$out/repo" "${prompt_args[@]}" "${size[@]}" --seed "$seed" --out "$out/input-data.json"

step "local generate: each prompt alone, then all ${#prompts[@]} as one batch"
for i in "${!prompts[@]}"; do
  "$fluxbuild" --json generate --models "$out/models" --prompt "${prompts[$i]}" "${size[@]}" --seed $((seed + i)) \
    --out "$out/local/alone-$i.png" > "$out/local-alone-$i.json"
done
"$fluxbuild" --json generate --models "$out/models" "${prompt_args[@]}" "${size[@]}" --seed "$seed" \
  --out "$out/local/batch.png" > "$out/local-batch.json"

step "start a real Triton server on 127.0.0.1:$port"
"$fluxbuild" serve --repo "$out/repo" --http-port "$port" --detach --pid-file "$pid_file" --log "$out/triton.log"

for c in 1 4 8; do
  step "perf_analyzer -m flux, concurrency $c"
  "$perf_analyzer" -m flux -u "127.0.0.1:$port" -i http --input-data "$out/input-data.json" \
    --concurrency-range "$c:$c" --request-count "$requests" --warmup-request-count "$c" \
    -f "$out/perf-c$c.csv" --verbose-csv 2>&1 | tee "$out/perf-c$c.log" | tail -n 12
done
stop_server

step "report"
python3 scripts/bench_serve_report.py --dir "$out" --height "$height" --width "$width" --steps "$steps" \
  --requests "$requests" --fluxbuild "$fluxbuild" --md bench/serve.md --json bench/serve.json
cat bench/serve.md
