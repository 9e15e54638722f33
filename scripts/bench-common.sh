# Sourced by the bench-*.sh scripts (after they define `fail`): finds the reference tensor-name
# TSVs the synthetic checkpoints are made from, unless TENSOR_NAMES already points at them.
if [[ -z "${TENSOR_NAMES:-}" ]]; then
    for candidate in ../shared ../../shared /work/shared; do
        [[ -d "$candidate/reference/tensor-names" ]] && TENSOR_NAMES="$candidate/reference/tensor-names" && break
    done
fi
[[ -d "${TENSOR_NAMES:-}" ]] || fail "reference tensor names not found: set TENSOR_NAMES to the folder of flux1_dev_transformer.tsv"

# synthetic_calibration CHECKPOINT_FILE OUT_JSON: the calibration table an fp8 export of the
# synthetic transformer needs (scripts/bench_synth_calibration.py: the real one runs the fp32 graph
# in ONNX Runtime, 47.6 GB at full size). The table names the checkpoint's sha256, which is cached
# beside it; openssl's digest uses the CPU's SHA extensions (coreutils' sha256sum took 3 min 46 s for
# the 23.8 GB transformer here).
synthetic_calibration() {
    local input=$1 out=$2
    local hash_file
    hash_file="$(dirname "$input")/sha256"
    if ! [[ -s $hash_file && $hash_file -nt $input ]]; then
        if command -v openssl > /dev/null; then openssl dgst -sha256 -r "$input"; else sha256sum "$input"; fi \
            | cut -d' ' -f1 > "$hash_file.tmp"
        mv "$hash_file.tmp" "$hash_file"
    fi
    python3 scripts/bench_synth_calibration.py "$TENSOR_NAMES/flux1_dev_transformer.tsv" "$(cat "$hash_file")" "$out"
}
