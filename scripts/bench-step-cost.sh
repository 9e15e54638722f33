#!/usr/bin/env bash
# `make bench-step-cost`: what one denoising step of the full FLUX.1 transformer costs on this
# machine's CPU (ONNX Runtime, fp32, all cores), measured on the 1 double + 2 single block slice
# at full width and scaled by blocks: every block has ~113 M weights applied to every token
# (double blocks: one stream per token kind) and attention over all tokens, so the 19 + 38 = 57
# blocks cost 19x the slice's 3 (an upper bound: the slice's embedders and final layer count 19x
# too). Token counts: the calibration resolutions (1024², 512², 256²) with dev's 512 T5 tokens.
# Writes bench/step-cost.md and bench/step-cost.json (rows for bench/README.md).
#
#   FLUXBUILD=, SYNTH= (default: target/debug binaries, built)   PYTHON=<python with onnxruntime>
#   SIDES="1024 512 256"   TEXT_TOKENS=512   RUNS=2
#   OLD=1024:28:16 NEW=512:8:4   (calibration defaults, side:steps:prompts, compared in the summary row)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-$PWD/bench/tmp}
REPORT=${REPORT:-bench/step-cost.md}
PYTHON=${PYTHON:-$PWD/.cache/triton-venv/bin/python}
SIDES=${SIDES:-1024 512 256}
TEXT_TOKENS=${TEXT_TOKENS:-512}
RUNS=${RUNS:-2}
OLD=${OLD:-1024:28:16}
NEW=${NEW:-512:8:4}

fail() { echo "bench-step-cost: $*" >&2; exit 2; }
source scripts/bench-common.sh
"$PYTHON" -c "import onnxruntime, numpy" 2>/dev/null \
    || fail "$PYTHON has no onnxruntime: run \`make triton-venv\` or set PYTHON"
if [[ -z "${FLUXBUILD:-}" || -z "${SYNTH:-}" ]]; then
    cargo build --quiet --bin fluxbuild --bin synth-checkpoint
    FLUXBUILD=${FLUXBUILD:-$PWD/target/debug/fluxbuild} SYNTH=${SYNTH:-$PWD/target/debug/synth-checkpoint}
fi
generator_args=(--names "$TENSOR_NAMES/flux1_dev_transformer.tsv" --dtype BF16 --count 19=1 --count 38=2)
size=$("$SYNTH" "${generator_args[@]}" --size-only)
mkdir -p "$BENCH_DIR"
work="$(cd "$BENCH_DIR" && pwd)/step-cost"
free=$(df --output=avail -B1 "$BENCH_DIR" | tail -1)
need=$((3 * size + (2 << 30))) # input, its fp32 graph (2x), 2 GiB margin
((free >= need)) || fail "not run: needs $((need >> 30)) GiB free in $BENCH_DIR"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
cleanup
mkdir -p "$work/input/transformer"
"$SYNTH" "${generator_args[@]}" --out "$work/input/transformer/diffusion_pytorch_model.safetensors" > /dev/null
echo '{"_class_name": "FluxTransformer2DModel"}' > "$work/input/transformer/config.json"
"$FLUXBUILD" export --transformer "$work/input/transformer" --only transformer --precision fp32 --out "$work/fp32" > /dev/null
model="$work/fp32/transformer/model.onnx"
cat "$model.data" > /dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
for side in $SIDES; do
    image_tokens=$(((side / 16) * (side / 16)))
    echo "bench-step-cost: ${side}² = $image_tokens + $TEXT_TOKENS tokens" >&2
    result=$(ORT_DYLIB_PATH= "$PYTHON" scripts/ort_session_bench.py "$model" --dim Li="$image_tokens" \
        --dim Lt="$TEXT_TOKENS" --threads "$(nproc)" --runs "$RUNS")
    rows+=("$side $image_tokens $result")
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

OLD=$OLD NEW=$NEW ROWS=$(printf '%s\n' "${rows[@]}") LOAD="$load_before before / $load_after after" TEXT_TOKENS=$TEXT_TOKENS \
    COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) REPORT=$REPORT PYTHONPATH=scripts python3 - <<'PY'
import bench_report
import json, os
text = int(os.environ["TEXT_TOKENS"])
date = bench_report.now()
mem = bench_report.memory_gib()
BLOCKS = 57 / 3  # full model / slice

def tflop(tokens):  # per step, full model: linear layers + attention (bench/NOTES.md)
    return 57 * (2 * 113e6 * tokens + 4 * tokens ** 2 * 3072) / 1e12

lines = [
    "# Cost of one denoising step of the full FLUX.1 transformer on this CPU",
    "",
    f"{date}, commit {os.environ['COMMIT']}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
    f"load average {os.environ['LOAD']} (other work shares this machine).",
    "Measured: the 1 double + 2 single block slice at full width, fp32, ONNX Runtime CPU, all cores, batch 1;",
    f"the fastest of the runs. Full model = 19 × the slice (57 blocks / 3). Text: {text} T5 tokens.",
    "",
    "| resolution | tokens | slice s / step | full model s / step (×19) | GFLOP/s | 28 steps × 16 prompts | 8 steps × 4 prompts |",
    "|---|---|---|---|---|---|---|",
]
per_step = {}
for line in os.environ["ROWS"].splitlines():
    side, image, result = line.split(" ", 2)
    r = json.loads(result)
    tokens = int(image) + text
    step = r["run_s"] * BLOCKS
    hours = lambda steps, prompts: f"{step * steps * prompts / 3600:.1f} h"
    lines.append(f"| {side}² | {image} + {text} | {r['run_s']:.2f} | {step:.0f} | {tflop(tokens) * 1e3 / step:.0f} | "
                 f"{hours(28, 16)} | {hours(8, 4)} |")
    per_step[int(side)] = step
summary = []
(old_side, old_steps, old_prompts), (new_side, new_steps, new_prompts) = (
    map(int, os.environ[k].split(":")) for k in ("OLD", "NEW"))
if old_side in per_step and new_side in per_step:
    old = per_step[old_side] * old_steps * old_prompts / 3600
    new = per_step[new_side] * new_steps * new_prompts / 3600
    lines += ["", f"Full-size calibration, transformer only: old defaults ({old_side}², {old_steps} steps, {old_prompts} prompts) "
              f"{old:.1f} h, new defaults ({new_side}², {new_steps} steps, {new_prompts} prompts) {new:.1f} h on this machine "
              "(and the fp32 graph needs ≥ 64 GB of RAM: 47.6 GB of weights plus ONNX Runtime's packed copies)."]
    summary.append(dict(benchmark="full-size dev calibration on this CPU, new defaults (from the slice)",
                        measured=f"{new:.1f} h", reference=f"old defaults {old:.1f} h", ratio=round(new / old, 3),
                        target="", met=None))
bench_report.write(os.environ["REPORT"], lines, date, summary)
PY
