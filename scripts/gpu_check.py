#!/usr/bin/env python3
"""Compares every TensorRT engine of an engines folder with ONNX Runtime (CPU, float32 graphs)
on the same inputs, at the min, opt and max shape of every optimization profile, and checks
that each engine carries exactly the profile shapes its manifest records.

Used by scripts/gpu-check.sh (`make gpu-check`) on a GPU host with TensorRT; needs the Python
packages tensorrt, onnxruntime, torch (CUDA) and numpy.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Bounds on the relative L2 error ||engine - reference|| / ||reference||, from the unit
# roundoff u of the narrowest arithmetic the engine may use (fp32 2^-24; TF32 and fp16 2^-11;
# bf16 2^-8) times about 20 for these shallow networks (a few dozen rounding steps that
# partly cancel). fp32 gets 1e-5: ONNX Runtime and TensorRT sum in different orders.
TOLERANCE = {"fp32": 1e-5, "tf32": 1e-2, "fp16": 1e-2, "bf16": 8e-2, "fp8": 2.5e-1}


def arithmetic(export_precision, build_precision):
    """The narrowest arithmetic an engine may use: typed engines keep the graph's types (TF32
    is on by default for fp32 layers), weakly typed ones may go down to the build precision;
    FP8 graphs (fp8 over bf16, fp8-fp16 over fp16) are bounded by their FP8 layers."""
    if export_precision.startswith("fp8"):
        return "fp8"
    if build_precision == "typed":
        return "tf32" if export_precision == "fp32" else export_precision
    if build_precision == "fp32":
        return "fp32" if export_precision == "fp32" else export_precision
    return build_precision


def make_inputs(network, shapes, corner, profile, config, rng):
    """Inputs like the pipeline's: token ids in the vocabulary, sigma in (0, 1], guidance 3.5,
    image ids on the (H/16, W/16) grid, text ids zero, Gaussian latents and embeddings."""
    width_tokens = None
    if profile.get("width"):
        width_tokens = profile["width"][corner] // 16
    feeds = {}
    for shape in shapes["inputs"]:
        name, dims = shape["name"], shape[corner]
        if name == "input_ids":
            feeds[name] = rng.integers(0, config.get("vocab_size", 1000), size=dims, dtype=np.int64)
        elif name == "timestep":
            feeds[name] = rng.uniform(0.05, 1.0, size=dims).astype(np.float32)
        elif name == "guidance":
            feeds[name] = np.full(dims, 3.5, dtype=np.float32)
        elif name == "img_ids":
            i = np.arange(dims[0])
            feeds[name] = np.stack([np.zeros_like(i), i // width_tokens, i % width_tokens], axis=1).astype(np.float32)
        elif name == "txt_ids":
            feeds[name] = np.zeros(dims, dtype=np.float32)
        else:
            feeds[name] = rng.standard_normal(size=dims).astype(np.float32)
    return feeds


def run_ort(session, feeds):
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {n: feeds[n] for n in names})
    return {o.name: v for o, v in zip(session.get_outputs(), outputs)}


class Engine:
    def __init__(self, plan, trt, torch):
        self.trt, self.torch = trt, torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan}: TensorRT cannot deserialize it")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {
            trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool,
        }

    def is_input(self, name):
        return self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT

    def profile_shapes(self, name, profile):
        return [list(s) for s in self.engine.get_tensor_profile_shape(name, profile)]

    def run(self, profile, feeds):
        torch = self.torch
        context = self.engine.create_execution_context()
        stream = torch.cuda.Stream()
        context.set_optimization_profile_async(profile, stream.cuda_stream)
        keep = {}
        for name in filter(self.is_input, self.names):
            dtype = self.dtypes[self.engine.get_tensor_dtype(name)]
            keep[name] = torch.from_numpy(feeds[name]).to(device="cuda", dtype=dtype).contiguous()
            context.set_input_shape(name, tuple(feeds[name].shape))
            context.set_tensor_address(name, keep[name].data_ptr())
        outputs = {}
        for name in (n for n in self.names if not self.is_input(n)):
            dtype = self.dtypes[self.engine.get_tensor_dtype(name)]
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("execute_async_v3 failed")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outputs.items()}


def compare(engine_out, reference, tolerance):
    result, passed = {}, True
    for name, ref in reference.items():
        got = engine_out.get(name)
        if got is None or got.shape != ref.shape:
            result[name] = {"error": f"shape {None if got is None else list(got.shape)} vs reference {list(ref.shape)}"}
            passed = False
            continue
        finite = bool(np.isfinite(got).all())
        diff = got.astype(np.float64) - ref.astype(np.float64)
        rel = float(np.linalg.norm(diff) / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))
        ok = finite and rel <= tolerance
        result[name] = {"rel_l2": rel, "max_abs": float(np.abs(diff).max()), "finite": finite, "passed": ok}
        passed &= ok
    return result, passed


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", required=True, help="graphs the engines were built from (for their config)")
    ap.add_argument("--reference", required=True, help="float32 graphs of the same checkpoint (ONNX Runtime runs these)")
    ap.add_argument("--engines", required=True)
    ap.add_argument("--export-precision", required=True)
    ap.add_argument("--build-precision", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--seed", type=int, default=20261201)
    args = ap.parse_args()

    import onnxruntime as ort
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device")
    manifest = json.loads((Path(args.engines) / "manifest.json").read_text())
    export = json.loads((Path(args.models) / "manifest.json").read_text())
    kind = arithmetic(args.export_precision, args.build_precision)
    tolerance = TOLERANCE[kind]
    rng = np.random.default_rng(args.seed)
    checks, passed = [], True
    for network, record in sorted(manifest["submodels"].items()):
        engine = Engine(Path(args.engines) / record["plan"], trt, torch)
        session = ort.InferenceSession(str(Path(args.reference) / network / "model.onnx"), providers=["CPUExecutionProvider"])
        config = export["submodels"].get(network, {}).get("config", {})
        for p, shapes in enumerate(record["shapes"]):
            # The engine must carry exactly the recorded profile shapes.
            for shape in shapes["inputs"]:
                if shape["name"] not in engine.names:
                    checks.append({"network": network, "profile": p, "error": f"engine has no input {shape['name']}"})
                    passed = False
                    continue
                got = engine.profile_shapes(shape["name"], p)
                if got != [shape["min"], shape["opt"], shape["max"]]:
                    checks.append({"network": network, "profile": p, "input": shape["name"], "error": f"engine profile {got} vs manifest"})
                    passed = False
            for corner in ("min", "opt", "max"):
                feeds = make_inputs(network, shapes, corner, record["optimization_profiles"][p], config, rng)
                outputs, ok = compare(engine.run(p, feeds), run_ort(session, feeds), tolerance)
                checks.append({"network": network, "profile": p, "corner": corner,
                               "shapes": {n: list(v.shape) for n, v in feeds.items()}, "outputs": outputs, "passed": ok})
                passed &= ok
                worst = max((o.get("rel_l2", float("inf")) for o in outputs.values()), default=float("nan"))
                print(f"{'ok  ' if ok else 'FAIL'} {network:<12} profile {p} {corner:<3} rel_l2 {worst:.2e} (bound {tolerance:.0e}, {kind})")
    report = {
        "engines": args.engines, "export_precision": args.export_precision, "build_precision": args.build_precision,
        "arithmetic": kind, "tolerance_rel_l2": tolerance, "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(), "passed": passed, "checks": checks,
    }
    Path(args.report).write_text(json.dumps(report, indent=2))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
