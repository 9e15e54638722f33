"""A calibration table for the synthetic full-size checkpoint of `make bench-engines PRECISION=fp8`.

The real table comes from `fluxbuild calibrate`, which runs the fp32 graph in ONNX Runtime: at full
size that graph is 47.6 GB and does not fit this machine. An engine build's time, memory and plan
size do not depend on the amax values, only on which layers are quantized, so the benchmark gives
every linear layer of the reference tensor list the same amax. The plan it builds is real; its
numerics are meaningless (random weights, made-up scales) and the report says so.

    bench_synth_calibration.py NAMES_TSV CHECKPOINT_SHA256 OUT_JSON
"""
import json
import os
import sys

# Any positive finite value: the build does not depend on it.
SYNTHETIC_AMAX = 4.0


# The exporter fuses q, k, v (and, in single blocks, the MLP input) into one MatMul whose weight, and
# calibration key, is named after the fused layer.
FUSED = {
    "transformer_blocks.{i}.attn.to_q.weight": "transformer_blocks.{i}.attn.to_qkv.weight",
    "transformer_blocks.{i}.attn.add_q_proj.weight": "transformer_blocks.{i}.attn.add_qkv_proj.weight",
    "single_transformer_blocks.{i}.attn.to_q.weight": "single_transformer_blocks.{i}.to_qkv_mlp.weight",
}


def linear_weights(tsv):
    """The names of every 2-D `.weight` (a linear layer) in a reference tensor list and of the fused
    layers the exporter makes of them, `{i}` expanded."""
    names = []
    with open(tsv) as f:
        next(f)
        for line in f:
            pattern, shape, count = line.rstrip("\n").split("\t")
            if pattern.endswith(".weight") and len(json.loads(shape)) == 2:
                for layer in [pattern] + ([FUSED[pattern]] if pattern in FUSED else []):
                    names += [layer.replace("{i}", str(i)) for i in range(int(count))] if "{i}" in layer else [layer]
    return names


def main():
    tsv, checkpoint_sha256, out = sys.argv[1:]
    table = {
        "format": "fluxbuild-calibration-v1",
        "model": {
            "submodel": "transformer",
            "model_sha256": "synthetic",
            "data_sha256": "synthetic",
            "checkpoint_sha256": [checkpoint_sha256],
        },
        "settings": {"synthetic": f"every linear layer's amax set to {SYNTHETIC_AMAX} (bench-engines: build figures only)"},
        "amax": {name: SYNTHETIC_AMAX for name in linear_weights(tsv)},
    }
    with open(out + ".tmp", "w") as f:
        json.dump(table, f, indent=1)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
