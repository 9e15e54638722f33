#!/usr/bin/env bash
# `make bench-engines`: builds the synthetic FLUX.1-dev transformer (random values, the real names
# and shapes; src/bin/synth-checkpoint.rs) into TensorRT-RTX engines on this machine (no GPU), a
# weightless plan (`--strip-weights`) and a full one, and writes bench/engines.md: export, parse and
# build time, peak RSS (and its heap and file-mapped parts), plan size. Checks free disk and memory
# first and exits 2, saying why, when nothing can fit; a mode that cannot fit is reported as not run.
#
#   BLOCKS=D+S      fewer blocks (D double + S single: a slice, e.g. 2+4; default: the full 19+38)
#   MODES="weightless full"   PRECISION=bf16|fp8  PROFILE=static-1024
#   COMPUTE_CAPABILITY=8.9 (one target; default: TensorRT-RTX's set, which fp8 plans cannot take at once)
#   fp8 exports with a synthetic calibration table (scripts/bench_synth_calibration.py: the real one needs
#   an fp32 run of the full-size graph in ONNX Runtime, 47.6 GB): real build figures, meaningless numerics.
#   BIN_PROFILE=release|debug (how fluxbuild is compiled)
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
MODES=${MODES:-weightless full}
# Host memory TensorRT-RTX 1.7 holds while building a full plan, per byte of weights: measured 2.6-3.1x
# (peak RSS; 2x of it heap: the builder's copy and the serialized plan, 1x the mapped weights file).
RSS_PER_WEIGHT_BYTE=${RSS_PER_WEIGHT_BYTE:-3}
# A weightless build never reads the MatMul weights, but TensorRT-RTX's heap grows by 0.34x of them:
# 334 MiB + 326 MiB per GB, fitted to 4 slices (bench/engines.md); 7.9 GiB for the full 19+38.
# WEIGHTLESS_RSS=BYTES overrides that estimate.

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
if [[ -n "${BLOCKS:-}" ]]; then
    [[ $BLOCKS =~ ^([0-9]+)\+([0-9]+)$ ]] || fail "BLOCKS=$BLOCKS: expected D+S (double + single blocks), e.g. 2+4"
    generator_args+=(--count "19=${BASH_REMATCH[1]}" --count "38=${BASH_REMATCH[2]}")
fi

make -s setup >/dev/null
cargo_flag=(); [[ $BIN_PROFILE == release ]] && cargo_flag=(--release)
cargo build "${cargo_flag[@]}" --quiet --bin fluxbuild --bin synth-checkpoint
bin=target/$BIN_PROFILE
size=$($bin/synth-checkpoint "${generator_args[@]}" --size-only)

checkpoint="$BENCH_DATA/flux1-dev-transformer-bf16${BLOCKS:+-blocks$BLOCKS}"
input="$checkpoint/transformer/diffusion_pytorch_model.safetensors"
have_input=0; [[ -f $input && $(stat -c %s "$input") == "$size" ]] && have_input=1
mkdir -p "$BENCH_DIR" "$BENCH_DATA"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
free=$(df --output=avail -B1 "$BENCH_DIR" | tail -1)
# the checkpoint (unless shared already), its export, a full plan (about the weights each; a
# weightless plan is megabytes), 2 GiB margin
plans=0; [[ " $MODES " == *" full "* ]] && plans=1
need=$(( (2 + plans - have_input) * size + (2 << 30) ))
(( free >= need )) || fail "not run: needs $(gb $need) free in $BENCH_DIR (checkpoint $(gb $size), its export$( ((plans)) && echo ", a full plan of about the same size"), 2 GiB margin); only $(gb $free) available. Try BLOCKS=2+4 (a slice)"
available=$(awk '/MemAvailable/ { printf "%.0f", $2 * 1024 }' /proc/meminfo)
declare -A skip=() rss_kib=()
for mode in $MODES; do
    case $mode in
        full) rss_need=$(( RSS_PER_WEIGHT_BYTE * size ))
              why="a full plan holds about ${RSS_PER_WEIGHT_BYTE}x the weights in memory with TensorRT-RTX 1.7" ;;
        weightless) rss_need=${WEIGHTLESS_RSS:-$(( (334 << 20) + size * 34 / 100 ))}
                    why="a weightless build holds about 0.35 GB + 0.34x the weights (the slices' fit)" ;;
        *) fail "MODES: $mode is neither weightless nor full" ;;
    esac
    (( available >= rss_need )) || skip[$mode]="not run: $why ($(gb $rss_need) for $(gb $size) of weights); only $(gb $available) available"
done
(( ${#skip[@]} < $(wc -w <<< "$MODES") )) || fail "${skip[*]}"

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
export_extra=()
if [[ $PRECISION == fp8* ]]; then
    synthetic_calibration "$input" "$BENCH_DIR/calibration.json"
    export_extra=(--calibration "$BENCH_DIR/calibration.json")
fi
targets=(); [[ -n "${COMPUTE_CAPABILITY:-}" ]] && targets=(--compute-capability "$COMPUTE_CAPABILITY")
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench-engines: fluxbuild export --transformer ... --precision $PRECISION" >&2
timed "$BENCH_DIR/t_export" $bin/fluxbuild export --transformer "$checkpoint/transformer" --only transformer \
    --precision "$PRECISION" "${export_extra[@]}" --out "$out_dir" > "$BENCH_DIR/export.log" 2>&1 \
    || { cat "$BENCH_DIR/export.log" >&2; fail "the export failed"; }
rows=()
for mode in $MODES; do
    if [[ -n "${skip[$mode]:-}" ]]; then
        rows+=("| \`fluxbuild build --runtime tensorrt-rtx\` $mode | ${skip[$mode]} | | | | | | |")
        continue
    fi
    extra=(); [[ $mode == weightless ]] && extra=(--strip-weights)
    echo "bench-engines: fluxbuild build --runtime tensorrt-rtx --profile $PROFILE ${extra[*]}" >&2
    rm -rf "$engines"
    python3 scripts/peak_memory.py --out "$BENCH_DIR/mem_$mode" -- $bin/fluxbuild build --runtime tensorrt-rtx \
        --models "$out_dir" --only transformer --profile "$PROFILE" --out "$engines" "${extra[@]}" "${targets[@]}" \
        > "$BENCH_DIR/build.log" 2>&1 || { cat "$BENCH_DIR/build.log" >&2; fail "the $mode build failed"; }
    rows+=("$(python3 - "$engines/manifest.json" "$BENCH_DIR/mem_$mode" "$mode" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["submodels"]["transformer"]
m = json.load(open(sys.argv[2]))
mib = lambda k: "%.0f MiB" % (k / 1024)
print("| `fluxbuild build --runtime tensorrt-rtx` %s | %.1f | %s | %s | %s | %.2f | %.1f | %.1f MB |" % (
    sys.argv[3], m["wall_s"], mib(m["peak_rss_kib"]), mib(m["peak_anon_kib"]), mib(m["peak_file_kib"]),
    r["parse_seconds"], r["build_seconds"], r["plan_bytes"] / 1e6))
PY
)")
    version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["submodels"]["transformer"]["tensorrt_version"])' "$engines/manifest.json")
    rss_kib[$mode]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["peak_rss_kib"])' "$BENCH_DIR/mem_$mode")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

read -r ex_s ex_kb ex_user ex_sys < "$BENCH_DIR/t_export"
weights=$(du -sb "$out_dir/transformer" | cut -f1)
verdict() { # peak RSS of a mode against the < 8 GiB target
    [[ -n "${rss_kib[$1]:-}" ]] || { echo "not measured"; return; }
    awk -v k="${rss_kib[$1]}" -v w="$weights" 'BEGIN { printf "%.0f MiB, %.2fx the weights: ", k / 1024, k * 1024 / w }'
    (( ${rss_kib[$1]} < 8 * 1024 * 1024 )) && echo met || echo MISSED
}
mkdir -p "$(dirname "$REPORT")"
cat > "$REPORT.tmp" <<REPORT
# Engine build benchmark: FLUX.1-dev transformer, TensorRT-RTX ${version:-1.7}, --precision $PRECISION, --profile $PROFILE

$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores,
$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, no GPU (TensorRT-RTX's CPU-only ahead-of-time build), load average
$load_before before / $load_after after (other work shares this machine: wall clock under that load); fluxbuild compiled $BIN_PROFILE.
Input: synthetic random BF16 checkpoint${BLOCKS:+ with $BLOCKS double+single blocks (a slice at full width; the model has 19+38)}, $(gb $size).
Graph: $(gb $weights) (model.onnx + model.onnx.data). Plans for compute capability ${COMPUTE_CAPABILITY:-8.0, 8.6, 8.9, 12.0, 12.1}.$([[ $PRECISION == fp8* ]] && echo "
FP8 scales from a synthetic calibration table (every linear layer's amax 4.0; scripts/bench_synth_calibration.py):
the build figures are real, the plan's numerics are not.")
Peak RSS is the kernel's high-water mark; heap (RssAnon) and file (RssFile: the memory-mapped
weights, pages the kernel drops and rereads under pressure) are their own peaks, sampled every 50 ms.

| step | wall s | peak RSS | heap | file | parse s | build s | plan |
|---|---|---|---|---|---|---|---|
| \`fluxbuild export --transformer ... --precision $PRECISION\` | $ex_s | $(mib $ex_kb) | | | | | |
$(printf '%s\n' "${rows[@]}")

Peak RSS against the target (< 8 GiB): weightless $(verdict weightless); full plan $(verdict full).
REPORT
mv "$REPORT.tmp" "$REPORT"
cat "$REPORT"
