#!/usr/bin/env python3
"""Times one exported graph in ONNX Runtime (CPU): session start, then a few runs on random inputs.

The session gets fluxbuild's own settings (triton/models/onnx_network/session_config.json, what
`fluxbuild generate` and a cpu repository use) unless --ort-defaults; --config adds or overrides.

Prints one JSON object: {"session_s", "first_run_s", "run_s" (the fastest of --runs), "rss_mib" (peak,
mapped weight files included), "anon_mib" (anonymous memory the session start added: the packed weights)}.
Symbolic dimensions take their sizes from --dim NAME=N (B defaults to 1).

    ort_session_bench.py model.onnx --dim Li=256 --dim Lt=64 [--threads 2] [--runs 2] [--ort-defaults]
        [--config session.disable_prepacking=1] [--opt-level all|extended|basic|disable]
        [--optimized-model out.onnx] [--verbose]
"""
import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
SESSION_CONFIG = Path(__file__).resolve().parent.parent / "triton/models/onnx_network/session_config.json"
NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--dim", action="append", default=[], help="NAME=N for a symbolic dimension")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--ort-defaults", action="store_true", help="without fluxbuild's session settings")
    parser.add_argument("--config", action="append", default=[], help="session config KEY=VALUE")
    parser.add_argument("--opt-level", choices=sorted(LEVELS), default="all")
    parser.add_argument("--optimized-model", help="write the graph as ORT optimized it")
    parser.add_argument("--verbose", action="store_true", help="ORT's verbose log on stderr")
    args = parser.parse_args()
    dims = {"B": 1}
    for item in args.dim:
        name, value = item.split("=", 1)
        dims[name] = int(value)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.graph_optimization_level = LEVELS[args.opt_level]
    config = {} if args.ort_defaults else json.loads(SESSION_CONFIG.read_text())
    config.update(item.split("=", 1) for item in args.config)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    if args.optimized_model:
        options.optimized_model_filepath = args.optimized_model
    if args.verbose:
        options.log_severity_level = 0

    anon_before = anonymous_mib()
    start = time.perf_counter()
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    session_s = time.perf_counter() - start
    anon_mib = anonymous_mib() - anon_before

    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else dims[d] for d in i.shape]
        dtype = NUMPY[i.type]
        if np.issubdtype(dtype, np.integer):
            feeds[i.name] = np.zeros(shape, dtype)
        elif i.name in ("timestep", "guidance"):
            feeds[i.name] = np.full(shape, 0.5 if i.name == "timestep" else 3.5, dtype)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    times = []
    for _ in range(max(args.runs, 1)):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"session_s": session_s, "first_run_s": times[0], "run_s": min(times), "rss_mib": rss_mib,
                      "anon_mib": anon_mib}))


def anonymous_mib():
    """This process's resident anonymous memory (heap, not mapped files), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no RssAnon")


if __name__ == "__main__":
    main()
