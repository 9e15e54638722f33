#!/usr/bin/env bash
# `make bench-memory` (benchmark, not a test): memory of the largest request a cpu deployment
# allows, and the VAE decoder's memory model. The tiny FLUX.1-dev fixture's CLIP, T5 and
# transformer with a full-size VAE decoder (synthetic 50M-parameter checkpoint, fp32): the decoder
# is what grows with pixels. Measures, in one run:
#   - the VAE decoder alone in ONNX Runtime (CPU, arena off, one process per run): peak RSS at
#     several sizes and batches -> bytes per output pixel (the memory model, docs/serving.md);
#   - a real Triton server (`fluxbuild serve`) with the repository `package --target cpu` writes,
#     for the largest request its limits allow (PROMPTS prompts at SIDE x SIDE, SIDE = its largest side, 1 step;
#     at the 8 GiB budget: 4 at 1024, or 1 at 1472, the largest image the memory model allows): RSS of the server
#     and of each backend stub before, at peak and after; the same with BASELINE's repository
#     (a fluxbuild binary built from an earlier commit, packaging the same models) when given.
# Writes bench/memory.md and bench/memory.json. Needs about 2 GB disk and 10 GiB memory (6 GiB at SIDE=512).
#
#   BASELINE=<fluxbuild binary of an earlier commit>   PORT=18400   SIDE=1024   PROMPTS=4   VAE_RUNS="256x1 512x1 768x1 1024x1 1024x2"
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${REPORT:-bench/memory.md}
PYTHON=${PYTHON:-$PWD/.cache/triton-venv/bin/python}
PORT=${PORT:-18400}
VAE_RUNS=${VAE_RUNS:-256x1 512x1 768x1 1024x1 1024x2}
# The cpu target's default largest side is 1024; SIDE=512 measures the same structure 4x faster
# (on a loaded 2-core machine 4 images at 1024² take longer than the client's 600 s).
SIDE=${SIDE:-1024}
PROMPTS=${PROMPTS:-4}
REQUEST="$(printf -- '--prompt %s ' a b c d | cut -d' ' -f1-$((2 * PROMPTS))) --height $SIDE --width $SIDE --steps 1 --seed 7 --server-timeout-s 3600"
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.32.0}

fail() { echo "bench-memory: $*" >&2; exit 2; }
source scripts/bench-common.sh
"$PYTHON" -c "import onnxruntime, numpy" 2>/dev/null || fail "$PYTHON has no onnxruntime: run \`make triton-venv\`"
[[ -z "${BASELINE:-}" || -x "${BASELINE:-}" ]] || fail "BASELINE=$BASELINE is not an executable"
available=$(awk '/MemAvailable/ { printf "%.0f", $2 * 1024 }' /proc/meminfo)
need_gib=$((SIDE > 512 ? 10 : 6))
((available >= need_gib << 30)) || fail "not run: needs $need_gib GiB of memory available, $((available >> 20)) MiB are"

cargo build --quiet --bin fluxbuild --bin synth-checkpoint
bin=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-memory.XXXXXX")
server_pid=
stop_server() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && while kill -0 "$server_pid" 2>/dev/null; do sleep 0.2; done; server_pid=; }
trap 'stop_server; rm -rf "$work"' EXIT

mkdir -p "$work/vae"
$bin/synth-checkpoint --names "$TENSOR_NAMES/vae_name_map.tsv" --column diffusers --dtype BF16 \
    --out "$work/vae/diffusion_pytorch_model.safetensors" > /dev/null
$bin/fluxbuild export --checkpoint tests/fixtures/pipeline/dev --vae "$work/vae" --precision fp32 \
    --out "$work/models" > "$work/export.log" 2>&1 || { cat "$work/export.log" >&2; fail "export failed"; }

echo "bench-memory: the VAE decoder alone ($VAE_RUNS)" >&2
# shellcheck disable=SC2086
"$PYTHON" scripts/bench_memory_vae.py "$work/models/vae_decoder/model.onnx" $VAE_RUNS > "$work/vae.json"

declare -A binary=([current]=$PWD/$bin/fluxbuild)
whiches=(current)
[[ -n "${BASELINE:-}" ]] && whiches=(baseline current) && binary[baseline]=$(realpath "$BASELINE")
for which in "${whiches[@]}"; do
    repo="$work/repo-$which"
    "${binary[$which]}" package --models "$work/models" --out "$repo" --target cpu --max-height "$SIDE" \
        --max-width "$SIDE" --height "$SIDE" --width "$SIDE" --network-timeout-ms 1800000 > /dev/null
    echo "bench-memory: $which repository, $REQUEST" >&2
    $bin/fluxbuild serve --repo "$repo" --http-port "$PORT" --grpc-port $((PORT + 1)) --metrics-port $((PORT + 2)) \
        --detach --pid-file "$work/server.pid" --log "$work/triton-$which.log" > /dev/null
    server_pid=$(cat "$work/server.pid")
    mkdir -p "$work/images-$which"
    "$PYTHON" scripts/bench_memory.py "http://127.0.0.1:$PORT" "$server_pid" "$repo" "$PWD/$bin/fluxbuild" \
        "$work/images-$which" "$REQUEST" > "$work/served-$which.json"
    grep -E "max_batch_pixels|request_rules" -A1 "$repo/flux/config.pbtxt" | grep string_value > "$work/limits-$which.txt" || true
    stop_server
done
same=unknown
[[ -n "${BASELINE:-}" ]] && same=$(for ((i = 0; i < PROMPTS; i++)); do cmp -s "$work/images-baseline/large-$i.png" "$work/images-current/large-$i.png" || echo no; done | grep -q no && echo no || echo yes)

WORK=$work WHICHES="${whiches[*]}" SAME=$same REPORT=$REPORT COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
    BASELINE_NAME=${BASELINE:-} python3 scripts/bench_memory_report.py
