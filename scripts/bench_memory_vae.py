"""The VAE decoder's memory per output pixel (benchmark, not a test): one ONNX Runtime CPU session
per measurement, in a fresh process, as the cpu target's backend runs it (arena off), at several
sizes and batches. Prints one JSON document: per run, RSS after the session loaded, peak RSS
during the run, and RSS after the outputs were dropped (bytes).

    python bench_memory_vae.py MODEL.onnx 256x1 512x1 1024x1 1024x2
"""

import ctypes
import json
import resource
import subprocess
import sys


def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def one(model, side, batch):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    latent = np.random.default_rng(0).standard_normal((batch, 16, side // 8, side // 8), dtype=np.float32)
    loaded = rss()
    before_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (images,) = session.run(["images"], {"latent": latent})
    assert images.shape == (batch, 3, side, side), images.shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del images
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(json.dumps(dict(side=side, batch=batch, loaded=loaded, load_peak=before_peak, peak=peak, after=rss())))


def main():
    if sys.argv[1] == "--one":
        one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    model, runs = sys.argv[1], []
    for spec in sys.argv[2:]:
        side, batch = spec.split("x")
        out = subprocess.run([sys.executable, __file__, "--one", model, side, batch], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout))
        print(f"bench-memory: VAE decoder {spec}: peak {runs[-1]['peak'] / 2**30:.2f} GiB", file=sys.stderr)
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
