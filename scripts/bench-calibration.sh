#!/usr/bin/env bash
# `make bench-calibration`: what cheaper `fluxbuild calibrate` settings cost the FP8 image, on the
# tiny dev and schnell fixture pipelines, in one run. For each setting (the old defaults: 1024²,
# the variant's steps, all 16 bundled prompts; and cheaper candidates): calibrate the fp32 export
# (timed), export `--precision fp8-fp16 --emulate` with that table (16-bit rounding real, as in
# tests/precision_calibrate.rs), generate the evaluation images and compare them with the fp32
# pipeline's (8-bit RGB PSNR). The evaluation prompts are not calibration prompts (out of sample),
# at 1024² and the variant's default steps: what a deployed engine generates.
# Writes bench/calibration.md and bench/calibration.json (rows for bench/README.md).
#
#   FLUXBUILD=<binary> (default: target/debug/fluxbuild, built)   PYTHON=<python with numpy>
#   SETTINGS="old:1024:28:16 ..."   (name:side:steps:prompts; steps at most the variant's default: schnell 4)
#   EVAL_SIDE=1024   VARIANTS="dev schnell"
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-$PWD/bench/tmp}
REPORT=${REPORT:-bench/calibration.md}
PYTHON=${PYTHON:-$PWD/.cache/triton-venv/bin/python}
EVAL_SIDE=${EVAL_SIDE:-1024}
VARIANTS=${VARIANTS:-dev schnell}
SETTINGS=${SETTINGS:-old:1024:28:16 512-8-16:512:8:16 512-8-4:512:8:4 256-4-4:256:4:4}
PROMPTS=("a red bicycle leaning against a brick wall covered in ivy"
    "an aerial photograph of a winding river through autumn forests, golden hour")

fail() { echo "bench-calibration: $*" >&2; exit 2; }
"$PYTHON" -c "import numpy" 2>/dev/null || fail "$PYTHON has no numpy: run \`make triton-venv\` or set PYTHON"
if [[ -z "${FLUXBUILD:-}" ]]; then
    cargo build --quiet --bin fluxbuild
    FLUXBUILD=$PWD/target/debug/fluxbuild
fi
mkdir -p "$BENCH_DIR"
work="$(cd "$BENCH_DIR" && pwd)/calibration"
free=$(df --output=avail -B1 "$BENCH_DIR" | tail -1)
((free >= 1 << 30)) || fail "not run: needs 1 GB free in $BENCH_DIR"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
cleanup
mkdir -p "$work"

eval_args=(--height "$EVAL_SIDE" --width "$EVAL_SIDE" --seed 0)
for p in "${PROMPTS[@]}"; do eval_args+=(--prompt "$p"); done
bundled=$(grep -v '^#' profiles/calibration-prompts.txt | grep -v '^[[:space:]]*$')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rows=()
for variant in $VARIANTS; do
    checkpoint=tests/fixtures/pipeline/$variant
    generation_steps=28
    [[ $variant == schnell ]] && generation_steps=4
    v="$work/$variant"
    echo "bench-calibration: $variant: fp32 export and reference images" >&2
    "$FLUXBUILD" export --checkpoint "$checkpoint" --precision fp32 --out "$v/fp32" > /dev/null
    "$FLUXBUILD" generate --models "$v/fp32" "${eval_args[@]}" --out "$v/fp32.png" > /dev/null
    for setting in $SETTINGS; do
        IFS=: read -r name side steps count <<< "$setting"
        steps=$((steps < generation_steps ? steps : generation_steps))
        head -n "$count" <<< "$bundled" > "$v/prompts-$name.txt"
        echo "bench-calibration: $variant: calibrate $name (${side}², $steps steps, $count prompts)" >&2
        /usr/bin/time -o "$v/time" -f "%e %U %S" "$FLUXBUILD" calibrate --models "$v/fp32" --prompts "$v/prompts-$name.txt" \
            --height "$side" --width "$side" --steps "$steps" --out "$v/calibration-$name.json" --json > "$v/calibrate.json"
        read -r wall user sys < "$v/time"
        "$FLUXBUILD" export --checkpoint "$checkpoint" --precision fp8-fp16 --emulate \
            --calibration "$v/calibration-$name.json" --out "$v/fp8-$name" > /dev/null
        "$FLUXBUILD" generate --models "$v/fp8-$name" "${eval_args[@]}" --out "$v/fp8-$name.png" > /dev/null
        rm -rf "$v/fp8-$name"
        rows+=("$variant $name $side $count $wall $user $sys")
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

WORK=$work ROWS=$(printf '%s\n' "${rows[@]}") LOAD="$load_before before / $load_after after" EVAL_SIDE=$EVAL_SIDE \
    COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) REPORT=$REPORT PYTHONPATH=scripts "$PYTHON" - <<'PY'
import bench_report
import json, os, struct, zlib
import numpy as np

def read_png(path):
    """8-bit RGB PNG -> uint8 array [h, w, 3] (all five row filters)."""
    data = open(path, "rb").read()
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            assert (depth, color) == (8, 2), f"{path}: not 8-bit RGB"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    out = np.zeros((h, 3 * w), np.int32)
    prev = np.zeros(3 * w, np.int32)
    for y in range(h):
        f, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            cur = row
        elif f == 1:  # Sub: a running sum per channel
            cur = np.cumsum(row.reshape(w, 3), axis=0).reshape(-1) % 256
        elif f == 2:  # Up
            cur = (row + prev) % 256
        else:  # Average, Paeth: byte by byte (plain ints: faster than numpy here)
            r, up, cur = row.tolist(), prev.tolist(), [0] * (3 * w)
            for i in range(3 * w):
                a = cur[i - 3] if i >= 3 else 0
                b = up[i]
                if f == 3:
                    pred = (a + b) // 2
                else:
                    c = up[i - 3] if i >= 3 else 0
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (r[i] + pred) & 255
            cur = np.array(cur, np.int32)
        out[y] = prev = cur
    return out.reshape(h, w, 3)

def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)

work = os.environ["WORK"]
rows = [l.split() for l in os.environ["ROWS"].splitlines()]
results, references = {}, {}
for variant, name, side, count, wall, user, sys in rows:
    calibration = json.load(open(f"{work}/{variant}/calibration-{name}.json"))
    if variant not in references:
        references[variant] = [read_png(f"{work}/{variant}/fp32-{i}.png") for i in range(2)]
    dbs = [psnr(read_png(f"{work}/{variant}/fp8-{name}-{i}.png"), reference)
           for i, reference in enumerate(references[variant])]
    results[(variant, name)] = dict(side=int(side), steps=calibration["settings"]["steps"], prompts=int(count),
                                    wall=float(wall), cpu=float(user) + float(sys), psnr=dbs,
                                    amax=calibration["amax"])
date = bench_report.now()
side = os.environ["EVAL_SIDE"]
lines = [
    "# FP8 calibration settings: cost and image quality (tiny fixture pipelines)",
    "",
    f"{date}, commit {os.environ['COMMIT']}, {os.cpu_count()} cores, load average {os.environ['LOAD']}.",
    "Each setting calibrates the fp32 export (`fluxbuild calibrate`, the first N bundled prompts), exports",
    "`--precision fp8-fp16 --emulate` with that table, and generates two evaluation prompts (not calibration",
    f"prompts) at {side}², the variant's default steps, seed 0; PSNR is the 8-bit image against the fp32",
    "pipeline's. `old` is the previous default (1024², the variant's steps, all 16 prompts).",
    "Transformer work (what full-size calibration costs) scales with steps × prompts × per-step cost",
    "of the token count: the last column is the estimate for the full FLUX.1 transformer",
    "(bench/NOTES.md: per-step TFLOP at 1024², 512², 256² with 512 text tokens for dev, 256 for schnell).",
    "",
    "| variant | setting | side | steps | prompts | calibrate wall s | × old | PSNR dB (prompt 1 / 2) | Δ vs old dB | max amax ratio vs old | full-size TFLOP |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
# Full-size FLUX.1 transformer, TFLOP per step: 2 × 11.3 G linear weights... per token
# (57 blocks × 113 M) plus attention 4 · L² · 3072 per block (bench/NOTES.md).
def tflop(side, text):
    tokens = (side // 16) ** 2 + text
    return 57 * (2 * 113e6 * tokens + 4 * tokens ** 2 * 3072) / 1e12
summary = []
for (variant, name), r in results.items():
    old = results[(variant, "old")]
    text = 512 if variant == "dev" else 256
    ratios = [r["amax"][k] / old["amax"][k] for k in old["amax"] if old["amax"][k] > 0]
    worst = max(ratios, key=lambda x: abs(np.log(x)))
    delta = min(r["psnr"]) - min(old["psnr"])
    total = tflop(r["side"], text) * r["steps"] * r["prompts"]
    lines.append(f"| {variant} | {name} | {r['side']} | {r['steps']} | {r['prompts']} | {r['wall']:.1f} | "
                 f"{r['wall'] / old['wall']:.2f} | {r['psnr'][0]:.1f} / {r['psnr'][1]:.1f} | {delta:+.1f} | {worst:.3f} | {total:,.0f} |")
    if name != "old":
        summary.append(dict(benchmark=f"calibrate {variant} {name} (fp8 PSNR {min(r['psnr']):.1f} vs {min(old['psnr']):.1f} dB)",
                            measured=f"{r['wall']:.1f} s", reference=f"old defaults {old['wall']:.1f} s",
                            ratio=round(r["wall"] / old["wall"], 3), target="PSNR within 0.5 dB of old", met=bool(delta >= -0.5)))
lines += ["", "`Δ vs old`: the worse prompt's PSNR minus the old default's worse prompt. `max amax ratio`: the",
          "layer whose calibrated input range moved most against the old default's (1.000: identical)."]
bench_report.write(os.environ["REPORT"], lines, date, summary)
PY
