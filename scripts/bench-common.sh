# Sourced by the bench-*.sh scripts (after they define `fail`): finds the reference tensor-name
# TSVs the synthetic checkpoints are made from, unless TENSOR_NAMES already points at them.
if [[ -z "${TENSOR_NAMES:-}" ]]; then
    for candidate in ../shared ../../shared /work/shared; do
        [[ -d "$candidate/reference/tensor-names" ]] && TENSOR_NAMES="$candidate/reference/tensor-names" && break
    done
fi
[[ -d "${TENSOR_NAMES:-}" ]] || fail "reference tensor names not found: set TENSOR_NAMES to the folder of flux1_dev_transformer.tsv"
