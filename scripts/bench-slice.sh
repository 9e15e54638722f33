#!/usr/bin/env bash
# `make bench-slice`: the FLUX.1-dev transformer at full width with 1 double and 2 single blocks
# (a synthetic 1.3 GB bf16 checkpoint, real names and shapes). Measures, in one run:
#   - export time per precision (bf16, fp16, fp32), fp16 and fp32 as ratios of bf16;
#   - ONNX Runtime (CPU) session start of the fp32 graph against one inference at 256 image + 64
#     text tokens, and that inference's own time.
# BASELINE=<a fluxbuild binary built from an earlier commit> is measured alongside (before/after).
#   - the same for the full-size CLIP-L (77 tokens), T5-XXL with 2 of its 24 blocks (512 and 256 tokens)
#     and the VAE decoder (256x256), current build only; every graph also with ONNX Runtime's defaults.
#   - the reference: torch.onnx (dynamo) exporting the same slice from diffusers' model in fp32 (time,
#     peak RSS), and its graph's session start and inference, interleaved with fluxbuild's fp32 graph.
#     TORCH_ONNX_PYTHON=<python with diffusers + onnxscript> TORCH_SITE=<folder holding torch>
#     (`make bench-slice` sets both); TORCH_ONNX_PYTHON= (empty) leaves the reference out.
# Writes bench/slice.md and bench/slice.json. Needs about 15 GB free and, for torch.onnx, 8 GB of RAM.
#
#   BENCH_DIR=bench/tmp   PYTHON=<python with onnxruntime> (default: the Triton venv's)
#   TENSOR_NAMES=<folder of the reference TSVs>   IMAGE_TOKENS=256 TEXT_TOKENS=64
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-$PWD/bench/tmp}
REPORT=${REPORT:-bench/slice.md}
PYTHON=${PYTHON:-$PWD/.cache/triton-venv/bin/python}
IMAGE_TOKENS=${IMAGE_TOKENS:-256}
TEXT_TOKENS=${TEXT_TOKENS:-64}

fail() { echo "bench-slice: $*" >&2; exit 2; }

source scripts/bench-common.sh
"$PYTHON" -c "import onnxruntime, numpy" 2>/dev/null \
    || fail "$PYTHON has no onnxruntime: run \`make triton-venv\` or set PYTHON"
[[ -z "${BASELINE:-}" || -x "${BASELINE:-}" ]] || fail "BASELINE=$BASELINE is not an executable"

cargo build --release --quiet --bin fluxbuild --bin synth-checkpoint
bin=target/release
generator_args=(--names "$TENSOR_NAMES/flux1_dev_transformer.tsv" --dtype BF16 --count 19=1 --count 38=2)
size=$($bin/synth-checkpoint "${generator_args[@]}" --size-only)
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
free=$(df --output=avail -B1 "$BENCH_DIR" | tail -1)
need=$((8 * size + (4 << 30))) # input, the fp32 graphs of each binary and torch.onnx (2x each), the encoders
gb() { awk -v b="$1" 'BEGIN { printf "%.1f GB", b / 1e9 }'; }
((free >= need)) || fail "not run: needs $(gb $need) free in $BENCH_DIR; only $(gb $free) available"

work="$BENCH_DIR/slice"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
cleanup
mkdir -p "$work/input/transformer"
$bin/synth-checkpoint "${generator_args[@]}" --out "$work/input/transformer/diffusion_pytorch_model.safetensors"
echo '{"_class_name": "FluxTransformer2DModel"}' > "$work/input/transformer/config.json"
cat "$work/input/transformer/diffusion_pytorch_model.safetensors" > /dev/null # every run reads it warm

binaries=(current)
declare -A binary=([current]=$PWD/$bin/fluxbuild)
[[ -n "${BASELINE:-}" ]] && binaries+=(baseline) && binary[baseline]=$(realpath "$BASELINE")
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
# Interleaved (current, baseline, current, ...) so that load from other work falls on both.
for precision in bf16 fp16 fp32; do
    for which in "${binaries[@]}"; do
        out="$work/out-$which-$precision"
        echo "bench-slice: $which export --precision $precision" >&2
        /usr/bin/time -o "$work/time" -f "%e %M %U %S" "${binary[$which]}" export \
            --transformer "$work/input/transformer" --only transformer --precision "$precision" --out "$out" \
            > "$work/export.log" 2>&1 || { cat "$work/export.log" >&2; fail "$which export --precision $precision failed"; }
        read -r wall kb user sys < "$work/time"
        rows+=("$which $precision $wall $kb $user $sys")
        [[ $precision == fp32 ]] || rm -rf "$out"
    done
done

# The reference export (its graph has static shapes: the benchmark's token counts).
torch_onnx=()
if [[ -n "${TORCH_ONNX_PYTHON:-}" ]]; then
    echo "bench-slice: torch.onnx (dynamo) export, fp32" >&2
    /usr/bin/time -o "$work/time" -f "%e %M %U %S" env PYTHONPATH="${TORCH_SITE:?TORCH_SITE: the folder holding torch}" \
        "$TORCH_ONNX_PYTHON" scripts/torch_onnx_slice.py "$work/input/transformer/diffusion_pytorch_model.safetensors" \
        "$work/out-torch-onnx/model.onnx" --double 1 --single 2 --image-tokens "$IMAGE_TOKENS" \
        --text-tokens "$TEXT_TOKENS" > "$work/export.log" 2>&1 || { cat "$work/export.log" >&2; fail "torch.onnx export failed"; }
    read -r wall kb user sys < "$work/time"
    rows+=("torch.onnx fp32 $wall $kb $user $sys")
    torch_onnx=(torch.onnx)
fi

same_fp32=unknown
[[ -n "${BASELINE:-}" ]] && same_fp32=$(cmp -s "$work/out-current-fp32/transformer/model.onnx.data" \
    "$work/out-baseline-fp32/transformer/model.onnx.data" && echo yes || echo no)
ort=()
graph() { [[ $1 == torch.onnx ]] && echo "$work/out-torch-onnx/model.onnx" || echo "$work/out-${1%%,*}-fp32/transformer/model.onnx"; }
# One session start and inference: LABEL MODEL [ort_session_bench.py options]. Every graph runs with
# fluxbuild's session settings (session_config.json); `,ort-defaults` is ONNX Runtime's own defaults.
time_session() {
    local label=$1 model=$2
    shift 2
    cat "$model.data" > /dev/null
    echo "bench-slice: ONNX Runtime session start and inference, $label" >&2
    ort+=("$label $(ORT_DYLIB_PATH= "$PYTHON" scripts/ort_session_bench.py "$model" --threads "$(nproc)" --runs 2 "$@")")
}
# Two interleaved rounds (current, baseline, torch.onnx, current with ORT's defaults, current, ...):
# the report keeps each graph's quicker session start, the one least disturbed by other work.
for round in 1 2; do
    for which in "${binaries[@]}" "${torch_onnx[@]}" current,ort-defaults; do
        extra=()
        [[ $which == *,ort-defaults ]] && extra=(--ort-defaults)
        time_session "$which" "$(graph "$which")" --dim Li="$IMAGE_TOKENS" --dim Lt="$TEXT_TOKENS" "${extra[@]}"
    done
done
# What the session start is made of: the same graph with MatMul weight prepacking turned off.
time_session current,no-prepacking "$(graph current)" --dim Li="$IMAGE_TOKENS" --dim Lt="$TEXT_TOKENS" \
    --config session.disable_prepacking=1
# The encoders' and the VAE decoder's session start: CLIP-L (123M parameters) and the VAE decoder
# (50M) at full size, T5-XXL at full width with 2 of its 24 blocks (start and run both grow with the
# blocks); fp32, current build. CLIP at 77 tokens, T5 at 512 (dev) and 256 (schnell) tokens, the
# decoder at 256x256 (a 32x32 latent).
$bin/synth-checkpoint --names "$TENSOR_NAMES/clip_l_text_encoder.tsv" --dtype BF16 \
    --out "$work/input/text_encoder/model.safetensors" > /dev/null
$bin/synth-checkpoint --names "$TENSOR_NAMES/t5_xxl_encoder.tsv" --dtype BF16 --count 24=2 \
    --out "$work/input/text_encoder_2/model.safetensors" > /dev/null
echo '{"num_layers": 2}' > "$work/input/text_encoder_2/config.json"
$bin/synth-checkpoint --names "$TENSOR_NAMES/vae_name_map.tsv" --column diffusers --dtype BF16 \
    --out "$work/input/vae/diffusion_pytorch_model.safetensors" > /dev/null
$bin/fluxbuild export --clip "$work/input/text_encoder" --t5 "$work/input/text_encoder_2" --vae "$work/input/vae" \
    --only clip,t5,vae_decoder --precision fp32 --out "$work/out-encoders" > "$work/export.log" 2>&1 \
    || { cat "$work/export.log" >&2; fail "export of CLIP, T5 and the VAE decoder failed"; }
for round in 1 2; do
    for label in clip t5-512 t5-256 vae_decoder; do
        model="$work/out-encoders/${label%-*}/model.onnx"
        dims=(--dim h=32 --dim w=32)
        [[ $label == t5-* ]] && dims+=(--dim L="${label#t5-}")
        time_session "$label" "$model" "${dims[@]}"
        time_session "$label,ort-defaults" "$model" "${dims[@]}" --ort-defaults
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

SAME_FP32=$same_fp32 ROWS=$(printf '%s\n' "${rows[@]}") ORT=$(printf '%s\n' "${ort[@]}") SIZE=$size \
    LOAD="$load_before before / $load_after after" COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
    TOKENS="$IMAGE_TOKENS+$TEXT_TOKENS" REPORT=$REPORT PYTHONPATH=scripts python3 - <<'PY'
import bench_report
import json, os, subprocess
exports = {}
for line in os.environ["ROWS"].splitlines():
    which, precision, wall, kb, user, sys = line.split()
    exports[(which, precision)] = dict(wall=float(wall), rss_mib=int(kb) / 1024, user=float(user), sys=float(sys))
ort = {}
for line in os.environ["ORT"].splitlines():
    which, result = line.split(" ", 1)
    result = json.loads(result)
    if which not in ort or result["session_s"] < ort[which]["session_s"]:
        ort[which] = result
torch_onnx = ("torch.onnx", "fp32") in exports
whiches = [w for w in ("baseline", "current") if (w, "bf16") in exports]
date = bench_report.now()
mem = bench_report.memory_gib()
lines = [
    "# Slice benchmark: FLUX.1-dev transformer, 1 double + 2 single blocks at full width",
    "",
    f"{date}, commit {os.environ['COMMIT']}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
    f"load average {os.environ['LOAD']} (other work shares this machine: wall-clock times under that load).",
    f"Input: synthetic random BF16 checkpoint, {int(os.environ['SIZE']) / 1e9:.2f} GB, read warm from the page cache.",
    "`baseline` is an earlier build measured in the same run, interleaved with the current one." if "baseline" in whiches else "",
    "",
    "## Export (`fluxbuild export --transformer ... --precision P`)",
    "",
    "| binary | precision | wall s | × bf16 | CPU s (user + sys) | × bf16 | peak RSS |",
    "|---|---|---|---|---|---|---|",
]
summary = []
for which in whiches:
    bf16 = exports[(which, "bf16")]["wall"]
    bf16_cpu = exports[(which, "bf16")]["user"] + exports[(which, "bf16")]["sys"]
    for precision in ("bf16", "fp16", "fp32"):
        e = exports[(which, precision)]
        ratio = e["wall"] / bf16
        cpu = e["user"] + e["sys"]
        lines.append(f"| {which} | {precision} | {e['wall']:.2f} | {ratio:.2f} | {cpu:.2f} | {cpu / bf16_cpu:.2f} | {e['rss_mib']:.0f} MiB |")
        if precision != "bf16":
            summary.append(dict(benchmark=f"slice export {precision} ({which})",
                                measured=f"{e['wall']:.2f} s ({cpu / bf16_cpu:.2f}× bf16 in CPU s)",
                                reference=f"bf16 export {bf16:.2f} s", ratio=round(ratio, 2),
                                target="<= 1.3" if precision == "fp16" else "", met=ratio <= 1.3 if precision == "fp16" else None))
if torch_onnx:
    t, c = exports[("torch.onnx", "fp32")], exports[("current", "fp32")]
    lines.append(f"| torch.onnx (dynamo) | fp32 | {t['wall']:.2f} | | {t['user'] + t['sys']:.2f} | | {t['rss_mib']:.0f} MiB |")
    summary.append(dict(benchmark="slice export fp32 (current) vs torch.onnx",
                        measured=f"{c['wall']:.2f} s, {c['rss_mib']:.0f} MiB peak",
                        reference=f"torch.onnx {t['wall']:.2f} s, {t['rss_mib']:.0f} MiB peak",
                        ratio=round(c["wall"] / t["wall"], 2), target="< 1", met=c["wall"] < t["wall"]))
lines += [
    "",
    f"## ONNX Runtime (CPU, {os.cpu_count()} threads): fp32 graphs, batch 1 (the transformer at {os.environ['TOKENS']} tokens)",
    "",
    "| graph | session start s | first run s | run s | start / run | packed weights | peak RSS |",
    "|---|---|---|---|---|---|---|",
]
def start_against(benchmark, o, reference, r, target):
    """A summary row: session start `o` against reference start `r` (target: below it)."""
    ratio = o["session_s"] / r["session_s"]
    return dict(benchmark=benchmark, measured=f"{o['session_s']:.2f} s (run {o['run_s']:.2f} s)",
                reference=f"{reference} {r['session_s']:.2f} s (run {r['run_s']:.2f} s)", ratio=round(ratio, 2),
                target="< 1" if target else "", met=ratio < 1 if target else None)
graphs = whiches + ["torch.onnx"] * torch_onnx + ["current,ort-defaults", "current,no-prepacking"]
graphs += [f"{n}{suffix}" for n in ("clip", "t5-512", "t5-256", "vae_decoder") for suffix in ("", ",ort-defaults")]
labels = {"current": "slice fp32 ORT session start (current)", "baseline": "slice fp32 ORT session start (baseline)",
          "clip": "CLIP-L fp32 ORT session start (77 tokens)", "vae_decoder": "VAE decoder fp32 ORT session start (256²)",
          "t5-512": "T5-XXL fp32 ORT session start (2 of 24 blocks, 512 tokens)",
          "t5-256": "T5-XXL fp32 ORT session start (2 of 24 blocks, 256 tokens)"}
for which in graphs:
    o = ort[which]
    ratio = o["session_s"] / o["run_s"]
    lines.append(f"| {which} | {o['session_s']:.2f} | {o['first_run_s']:.2f} | {o['run_s']:.2f} | {ratio:.2f} "
                 f"| {o['anon_mib']:.0f} MiB | {o['rss_mib']:.0f} MiB |")
    if which.endswith(",ort-defaults"):
        network = which.split(",")[0]
        summary.append(start_against(f"{labels[network]}: fluxbuild's session settings vs ORT's defaults",
                                     ort[network], "ORT defaults", o, target=False))
    elif which == "torch.onnx":
        summary.append(start_against("slice fp32 ORT session start (current) vs the torch.onnx graph",
                                     ort["current"], "torch.onnx graph", o, target=True))
    elif which in labels:
        summary.append(dict(benchmark=labels[which], measured=f"{o['session_s']:.2f} s",
                            reference=f"one inference {o['run_s']:.2f} s", ratio=round(ratio, 2), target="<= 1.5",
                            met=ratio <= 1.5))
if "baseline" in whiches:
    lines += ["", f"The two builds' fp32 data files are byte-identical: {os.environ['SAME_FP32']} "
              "(if yes, their session start and run differ only by the machine's load)."]
if torch_onnx:
    lines += ["", "`torch.onnx`: diffusers' FluxTransformer2DModel with the same weights in fp32, exported by",
              "torch.onnx (dynamo) with static shapes at the benchmark's token counts (scripts/torch_onnx_slice.py).",
              "Session starts: the quicker of two interleaved rounds per graph."]
lines += ["", "Every graph runs with fluxbuild's ONNX Runtime session settings (triton/models/onnx_network/",
          "session_config.json: what `fluxbuild generate` and a cpu repository use); `,ort-defaults` is the same",
          "graph with ONNX Runtime's defaults (the MatMul weights packed one after the other). `packed weights`:",
          "the anonymous memory the session start added. Peak RSS includes the memory-mapped weight file.",
          "`current,no-prepacking`: the current graph with the session option `session.disable_prepacking=1`",
          "(ONNX Runtime then packs the MatMul weights on every run instead of once at session start).",
          "`clip`, `vae_decoder`: the full-size CLIP-L and VAE decoder, fp32, current build (CLIP at 77 tokens,",
          "the decoder at 256×256). `t5-512`, `t5-256`: T5-XXL at full width with 2 of its 24 blocks (session start",
          "and run both grow with the blocks), at 512 tokens (dev) and 256 (schnell)."]
bench_report.write(os.environ["REPORT"], lines, date, summary)
PY
