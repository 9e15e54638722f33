"""Writes the seed corpus of tests/fuzz_headers.rs (python3, standard library only).

Small safetensors files exercising each header feature (metadata, padding, zero-size and scalar
tensors, every supported dtype) and a two-shard index over the schnell transformer fixture.
The fuzz test also uses the real fixtures (transformer, CLIP) as seeds."""
import json, struct, pathlib

HERE = pathlib.Path(__file__).parent
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I64": 8}


def write(name, tensors, metadata=None, pad=True):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for tname, dtype, shape in tensors:
        n = SIZES[dtype]
        for d in shape:
            n *= d
        chunk = bytes((len(data) + i) * 37 % 251 for i in range(n))
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += chunk
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:  # the reference writer pads the header with spaces to a multiple of 8
        text += b" " * (-len(text) % 8)
    (HERE / name).write_bytes(struct.pack("<Q", len(text)) + text + data)


write("mixed.safetensors", [("a.weight", "F32", [3, 2]), ("a.bias", "F16", [3]), ("b", "BF16", [2, 2])],
      metadata={"format": "pt"})
write("zero_and_scalar.safetensors", [("empty", "F32", [0, 4]), ("scalar", "F32", []), ("tail", "F16", [5])])
write("fp8_i64.safetensors", [("q", "F8_E4M3", [4, 4]), ("position_ids", "I64", [1, 7])], pad=False)

# The index: the schnell diffusers fixture split in two shards (tensors in name order, first half
# in shard 1). The test builds the shards from the fixture by this weight_map.
fixture = HERE.parent / "fixtures/transformer/schnell/diffusers/diffusion_pytorch_model.safetensors"
raw = fixture.read_bytes()
n = struct.unpack("<Q", raw[:8])[0]
names = sorted(k for k in json.loads(raw[8:8 + n]) if k != "__metadata__")
shards = ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
weight_map = {k: shards[0] if i < len(names) // 2 else shards[1] for i, k in enumerate(names)}
index = {"metadata": {"total_size": len(raw) - 8 - n}, "weight_map": weight_map}
(HERE / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
