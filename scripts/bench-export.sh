#!/usr/bin/env bash
# `make bench-export`: exports a full-size synthetic checkpoint (random values, the real names
# and shapes) with `fluxbuild export` and compares wall time and peak RSS with a plain copy of
# the same file. Writes bench/export.md. Needs disk for the input and the output (2 × 23.8 GB for
# the FLUX.1-dev transformer); says so and exits 2 when there is not enough.
#
#   MODEL=transformer|clip|t5|vae   LAYOUT=diffusers|bfl (transformer, vae)
#   PRECISION=bf16 (fp8: the transformer, with a synthetic calibration table)
#   BENCH_DIR=bench/tmp             MAX_COUNT=N (fewer blocks: a quick, smaller run)
#   INPUT_DIR=<folder>  keep the synthetic checkpoint there and reuse it when present (a shared
#                       one: /work/bench-data on the team machine; run under flock, see HELPERS)
#   TENSOR_NAMES=<folder of the reference TSVs> (default: shared/reference/tensor-names nearby)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-transformer}
LAYOUT=${LAYOUT:-diffusers}
PRECISION=${PRECISION:-bf16}
BENCH_DIR=${BENCH_DIR:-$PWD/bench/tmp}
REPORT=${REPORT:-bench/export.md}

fail() { echo "bench-export: $*" >&2; exit 2; }

source scripts/bench-common.sh

column=diffusers
case "$MODEL/$LAYOUT" in
    transformer/diffusers) tsv=flux1_dev_transformer.tsv; input=transformer/diffusion_pytorch_model.safetensors; flag=--transformer; source=transformer ;;
    transformer/bfl) tsv=flux1_dev_bfl_singlefile.tsv; input=flux1-dev.safetensors; flag=--transformer; source=$input ;;
    clip/*) tsv=clip_l_text_encoder.tsv; input=text_encoder/model.safetensors; flag=--clip; source=text_encoder ;;
    t5/*) tsv=t5_xxl_encoder.tsv; input=text_encoder_2/model.safetensors; flag=--t5; source=text_encoder_2 ;;
    vae/diffusers) tsv=vae_name_map.tsv; input=vae/diffusion_pytorch_model.safetensors; flag=--vae; source=vae ;;
    vae/bfl) tsv=vae_name_map.tsv; column=bfl_ae; input=ae.safetensors; flag=--vae; source=$input ;;
    *) fail "unknown MODEL/LAYOUT $MODEL/$LAYOUT" ;;
esac
# The submodel `--only` names: the flag's name, except the VAE's, which exports its decoder.
submodel=${flag#--}
[[ $submodel == vae ]] && submodel=vae_decoder
generator_args=(--names "$TENSOR_NAMES/$tsv" --column "$column" --dtype BF16)
[[ -n "${MAX_COUNT:-}" ]] && generator_args+=(--max-count "$MAX_COUNT")

cargo build --release --quiet --bin fluxbuild --bin synth-checkpoint
bin=target/release
size=$($bin/synth-checkpoint "${generator_args[@]}" --size-only)
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
free=$(df --output=avail -B1 "$BENCH_DIR" | tail -1)
in_dir=${INPUT_DIR:-$BENCH_DIR/input}
reuse=0
[[ -n "${INPUT_DIR:-}" && -f "$in_dir/$input" && $(stat -c %s "$in_dir/$input" 2>/dev/null) == "$size" ]] && reuse=1
# input (unless reused) + its copy or the export (one at a time) + 2 GiB margin
need=$(((2 - reuse) * size + (2 << 30)))
gb() { awk -v b="$1" 'BEGIN { printf "%.1f GB", b / 1e9 }'; }
if (( free < need )); then
    fail "not run: needs $(gb $need) free in $BENCH_DIR (the $(gb $size) input, its copy or export, 2 GiB margin); only $(gb $free) available"
fi

out_dir="$BENCH_DIR/out"
copy="$BENCH_DIR/copy.safetensors"
cleanup() {
    rm -rf "$out_dir" "$copy" "$BENCH_DIR/calibration.json"
    [[ -n "${INPUT_DIR:-}" ]] || rm -rf "$in_dir"
}
trap cleanup EXIT
cleanup

# /usr/bin/time: elapsed seconds, peak RSS (KiB), user and system seconds
timed() { local out=$1; shift; /usr/bin/time -o "$out" -f "%e %M %U %S" "$@"; }
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

if ((reuse)); then
    echo "bench-export: reusing the $(gb $size) synthetic $MODEL ($LAYOUT) in $in_dir" >&2
    echo "0 0 0 0" > "$BENCH_DIR/t_gen"
else
    echo "bench-export: writing a $(gb $size) synthetic $MODEL ($LAYOUT) to $in_dir" >&2
    timed "$BENCH_DIR/t_gen" $bin/synth-checkpoint "${generator_args[@]}" --out "$in_dir/$input"
fi
[[ "$MODEL/$LAYOUT" == "transformer/diffusers" ]] && echo '{"_class_name": "FluxTransformer2DModel"}' > "$in_dir/transformer/config.json"

echo "bench-export: plain copy" >&2
timed "$BENCH_DIR/t_cp" sh -c "cp --reflink=never '$in_dir/$input' '$copy' && sync '$copy'"
rm -f "$copy"

export_extra=()
if [[ $PRECISION == fp8* ]]; then
    [[ $MODEL == transformer ]] || fail "PRECISION=$PRECISION: fp8 quantizes the transformer only"
    synthetic_calibration "$in_dir/$input" "$BENCH_DIR/calibration.json"
    export_extra=(--calibration "$BENCH_DIR/calibration.json")
fi
echo "bench-export: fluxbuild export $flag ... --precision $PRECISION" >&2
timed "$BENCH_DIR/t_export" $bin/fluxbuild export "$flag" "$in_dir/$source" --only "$submodel" \
    --precision "$PRECISION" "${export_extra[@]}" --out "$out_dir" > "$BENCH_DIR/export.log" 2>&1 \
    || { cat "$BENCH_DIR/export.log" >&2; fail "the export failed"; }
out_bytes=$(du -sb "$out_dir" | cut -f1)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

read -r gen_s gen_kb gen_user gen_sys < "$BENCH_DIR/t_gen"
read -r cp_s cp_kb cp_user cp_sys < "$BENCH_DIR/t_cp"
read -r ex_s ex_kb ex_user ex_sys < "$BENCH_DIR/t_export"
ratio=$(awk -v a="$ex_s" -v b="$cp_s" 'BEGIN { printf "%.2f", a / b }')
verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "met" : "MISSED") }'; }
time_ok=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.5) }')
rss_ok=$(( ex_kb < 2 * 1024 * 1024 ))
mib() { awk -v k="$1" 'BEGIN { printf "%.0f MiB", k / 1024 }'; }

mkdir -p "$(dirname "$REPORT")"
cat > "$REPORT.tmp" <<REPORT
# Export benchmark: $MODEL ($LAYOUT layout), --precision $PRECISION

$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores,
$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, load average $load_before before / $load_after after
(other work shares this machine: times are wall clock under that load).
Input: synthetic random BF16 checkpoint from \`$tsv\`${MAX_COUNT:+ (block counts clamped to $MAX_COUNT)}, $(gb $size).
Output: $(gb $out_bytes) (model.onnx + model.onnx.data, with manifest).

| step | wall s | peak RSS | user s | sys s |
|---|---|---|---|---|
$(if ((reuse)); then echo "| the synthetic checkpoint: reused from INPUT_DIR | | | | |"; else echo "| write the synthetic checkpoint (streamed) | $gen_s | $(mib $gen_kb) | $gen_user | $gen_sys |"; fi)
| \`cp\` + \`sync\` of the same file | $cp_s | $(mib $cp_kb) | $cp_user | $cp_sys |
| \`fluxbuild export $flag ... --precision $PRECISION\` | $ex_s | $(mib $ex_kb) | $ex_user | $ex_sys |

Export / copy time: **${ratio}×** (target ≤ 1.5×: $(verdict "$time_ok")). Peak RSS $(mib $ex_kb) (target < 2 GiB: $(verdict "$rss_ok")).
The export also computes the sha256 of its input and output for the manifest; the copy does not.
REPORT
mv "$REPORT.tmp" "$REPORT"
# The summary \`make bench\` gathers into bench/README.md.
json=${REPORT%.md}.json
cat > "$json.tmp" <<JSON
{"date": "$(date -u +%Y-%m-%dT%H:%MZ)", "report": "$REPORT", "rows": [
 {"benchmark": "full-size $MODEL export ($LAYOUT, $PRECISION)", "measured": "$ex_s s, $(mib $ex_kb) peak",
  "reference": "cp + sync $cp_s s", "ratio": $ratio, "target": "<= 1.5", "met": $( ((time_ok)) && echo true || echo false)}
]}
JSON
mv "$json.tmp" "$json"
cat "$REPORT"
