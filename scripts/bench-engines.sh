#!/usr/bin/env bash
# `make bench-engines`: builds the synthetic FLUX.1-dev transformer (random values, the real names
# and shapes; src/bin/synth-checkpoint.rs) into a TensorRT-RTX engine on this machine (no GPU) and
# writes bench/engines.md: export, parse and build time, peak RSS, plan size. Checks free disk and
# memory first and exits 2, saying why, when the build cannot fit.
#
#   MAX_COUNT=N     fewer blocks (N double + N single: a slice; default: the full 19 + 38)
#   PRECISION=bf16  PROFILE=static-1024  BIN_PROFILE=release|debug (how fluxbuild is compiled)
#   BENCH_DATA=/work/bench-data (the shared synthetic checkpoint, kept; generated under
#   /work/coord/bench.lock if absent)   BENCH_DIR=bench/tmp (export and plan, deleted after)
set -euo pipefail
cd "$(dirname "$0")/.."
PRECISION=${PRECISION:-bf16}
PROFILE=${PROFILE:-static-1024}
BIN_PROFILE=${BIN_PROFILE:-release}
BENCH_DATA=${BENCH_DATA:-/work/bench-data}
BENCH_DIR=${BENCH_DIR:-$PWD/bench/tmp}
REPORT=${REPORT:-bench/engines.md}
LOCK=${LOCK:-/work/coord/bench.lock}
# Host memory TensorRT-RTX 1.7 holds while building, per byte of weights: measured 2.6-3.0x (10.5 to
# 12.1 GB peak RSS for a 4.0 GB bf16 slice): the parsed weights, the builder's copy, the serialized plan.
RSS_PER_WEIGHT_BYTE=${RSS_PER_WEIGHT_BYTE:-3}

fail() { echo "bench-engines: $*" >&2; exit 2; }
gb() { awk -v b="$1" 'BEGIN { printf "%.1f GB", b / 1e9 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f MiB", k / 1024 }'; }

if [[ -z "${TENSOR_NAMES:-}" ]]; then
    for candidate in ../shared ../../shared /work/shared; do
        [[ -d "$candidate/reference/tensor-names" ]] && TENSOR_NAMES="$candidate/reference/tensor-names" && break
    done
fi
[[ -d "${TENSOR_NAMES:-}" ]] || fail "reference tensor names not found: set TENSOR_NAMES to the folder of flux1_dev_transformer.tsv"
generator_args=(--names "$TENSOR_NAMES/flux1_dev_transformer.tsv" --column diffusers --dtype BF16)
[[ -n "${MAX_COUNT:-}" ]] && generator_args+=(--max-count "$MAX_COUNT")

make -s setup >/dev/null
cargo_flag=(); [[ $BIN_PROFILE == release ]] && cargo_flag=(--release)
cargo build "${cargo_flag[@]}" --quiet --bin fluxbuild --bin synth-checkpoint
bin=target/$BIN_PROFILE
size=$($bin/synth-checkpoint "${generator_args[@]}" --size-only)

checkpoint="$BENCH_DATA/flux1-dev-transformer-bf16${MAX_COUNT:+-max$MAX_COUNT}"
input="$checkpoint/transformer/diffusion_pytorch_model.safetensors"
have_input=0; [[ -f $input && $(stat -c %s "$input") == "$size" ]] && have_input=1
mkdir -p "$BENCH_DIR" "$BENCH_DATA"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
free=$(df --output=avail -B1 "$BENCH_DIR" | tail -1)
# the checkpoint (unless shared already), its export, the plan (about the weights each), 2 GiB margin
need=$(( (3 - have_input) * size + (2 << 30) ))
(( free >= need )) || fail "not run: needs $(gb $need) free in $BENCH_DIR (checkpoint $(gb $size), its export, a plan of about the same size, 2 GiB margin); only $(gb $free) available"
available=$(awk '/MemAvailable/ { printf "%.0f", $2 * 1024 }' /proc/meminfo)
rss_need=$(( RSS_PER_WEIGHT_BYTE * size ))
(( available >= rss_need )) || fail "not run: building holds about ${RSS_PER_WEIGHT_BYTE}x the weights in memory with TensorRT-RTX 1.7 \
($(gb $rss_need) for $(gb $size)); only $(gb $available) available. Try MAX_COUNT=4 (a slice)"

# /usr/bin/time: elapsed seconds, peak RSS (KiB), user and system seconds
timed() { local out=$1; shift; /usr/bin/time -o "$out" -f "%e %M %U %S" "$@"; }
if (( ! have_input )); then
    echo "bench-engines: writing the $(gb $size) synthetic checkpoint to $checkpoint (under $LOCK)" >&2
    mkdir -p "$checkpoint/transformer"
    flock "$LOCK" $bin/synth-checkpoint "${generator_args[@]}" --out "$input.tmp"
    mv "$input.tmp" "$input"
    echo '{"_class_name": "FluxTransformer2DModel"}' > "$checkpoint/transformer/config.json"
fi

out_dir="$BENCH_DIR/graphs"
engines="$BENCH_DIR/engines"
cleanup() { rm -rf "$out_dir" "$engines"; }
trap cleanup EXIT
cleanup
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench-engines: fluxbuild export --transformer ... --precision $PRECISION" >&2
timed "$BENCH_DIR/t_export" $bin/fluxbuild export --transformer "$checkpoint/transformer" --only transformer \
    --precision "$PRECISION" --out "$out_dir" > "$BENCH_DIR/export.log" 2>&1 \
    || { cat "$BENCH_DIR/export.log" >&2; fail "the export failed"; }
echo "bench-engines: fluxbuild build --runtime tensorrt-rtx --profile $PROFILE" >&2
timed "$BENCH_DIR/t_build" $bin/fluxbuild build --runtime tensorrt-rtx --models "$out_dir" --only transformer \
    --profile "$PROFILE" --out "$engines" --json > "$BENCH_DIR/build.json" 2> "$BENCH_DIR/build.log" \
    || { cat "$BENCH_DIR/build.log" >&2; fail "the build failed"; }
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

read -r ex_s ex_kb ex_user ex_sys < "$BENCH_DIR/t_export"
read -r b_s b_kb b_user b_sys < "$BENCH_DIR/t_build"
read -r parse_s build_s plan_bytes version < <(python3 - "$engines/manifest.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["submodels"]["transformer"]
print("%.2f %.1f %d %s" % (r["parse_seconds"], r["build_seconds"], r["plan_bytes"], r["tensorrt_version"]))
PY
)
weights=$(du -sb "$out_dir/transformer" | cut -f1)
rss_ok=$(( b_kb < 8 * 1024 * 1024 ))

mkdir -p "$(dirname "$REPORT")"
cat > "$REPORT.tmp" <<REPORT
# Engine build benchmark: FLUX.1-dev transformer, TensorRT-RTX $version, --precision $PRECISION, --profile $PROFILE

$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores,
$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, no GPU (TensorRT-RTX's CPU-only ahead-of-time build), load average
$load_before before / $load_after after (other work shares this machine: wall clock under that load); fluxbuild compiled $BIN_PROFILE.
Input: synthetic random BF16 checkpoint${MAX_COUNT:+ with block counts clamped to $MAX_COUNT (a slice: $MAX_COUNT double + $MAX_COUNT single blocks, full width)}, $(gb $size).
Graph: $(gb $weights) (model.onnx + model.onnx.data). Plan: $(gb $plan_bytes), for compute capability 8.0, 8.6, 8.9, 12.0, 12.1.

| step | wall s | peak RSS | user s | sys s |
|---|---|---|---|---|
| \`fluxbuild export --transformer ... --precision $PRECISION\` | $ex_s | $(mib $ex_kb) | $ex_user | $ex_sys |
| \`fluxbuild build --runtime tensorrt-rtx\` (whole command) | $b_s | $(mib $b_kb) | $b_user | $b_sys |
| of which: ONNX parse (\`parseFromFile\`) | $parse_s | | | |
| of which: parse + \`buildSerializedNetwork\` + plan written | $build_s | | | |

Peak RSS of the build: $(mib $b_kb), $(awk -v k="$b_kb" -v w="$weights" 'BEGIN { printf "%.1f", k * 1024 / w }')x the weights (target < 8 GiB: $( ((rss_ok)) && echo met || echo MISSED)).
REPORT
mv "$REPORT.tmp" "$REPORT"
cat "$REPORT"
