"""Scheduling, cancellation and admission figures of a running `fluxbuild serve` deployment of the
tiny fixture (benchmark, not a test; `make bench-scheduling` writes bench/scheduling.md).

usage: bench-scheduling.py HTTP_URL GRPC_URL REPO OUT.md
"""

import statistics
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def inputs(module, prompt, steps, seed=1, guidance=None):
    values = [
        ("prompt", "BYTES", np.array([[prompt]], dtype=np.object_)),
        ("steps", "INT32", np.array([[steps]], dtype=np.int32)),
        ("seed", "INT64", np.array([[seed]], dtype=np.int64)),
    ]
    if guidance is not None:
        values.append(("guidance", "FP32", np.array([[guidance]], dtype=np.float32)))
    out = []
    for name, dtype, value in values:
        tensor = module.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def timed(client, *args, **kwargs):
    started = time.perf_counter()
    try:
        client.infer("flux", inputs(httpclient, *args, **kwargs))
        ok = True
    except Exception:
        ok = False
    return time.perf_counter() - started, ok


def transformer_calls(client):
    stats = client.get_inference_statistics("transformer")["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def stub_rss_kib(repo, model):
    import os

    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            if f"{repo}/{model}/1/model.py" in cmdline:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main():
    http_url, grpc_url, repo, out = sys.argv[1:5]
    client = httpclient.InferenceServerClient(url=http_url.removeprefix("http://"), concurrency=8, network_timeout=600)
    lines = ["# Scheduling, cancellation and admission (tiny fixture, cpu target, 64x64)", ""]
    timed(client, "warm up", 4)

    alone = sorted(timed(client, "a red fox", 4)[0] for _ in range(5))
    beside = []
    for _ in range(5):
        long = threading.Thread(target=timed, args=(client, "a long one", 60))
        long.start()
        time.sleep(0.3)
        beside.append(timed(client, "a red fox", 4)[0])
        long.join()
    a, b = statistics.median(alone), statistics.median(beside)
    lines += [f"- 4-step request alone: median {a * 1e3:.0f} ms; next to a 60-step request: median {b * 1e3:.0f} ms ({b / a:.2f}x; target 1.2x)"]

    # Bad requests under load: two 60-step requests and a 4-step stream in flight.
    load = [threading.Thread(target=timed, args=(client, f"load {i}", 60)) for i in range(2)]
    for t in load:
        t.start()
    time.sleep(0.3)
    bad = [timed(client, "a cat", 4, guidance=3e38) for _ in range(10)]
    for t in load:
        t.join()
    assert not any(ok for _, ok in bad)
    bad_ms = sorted(t * 1e3 for t, _ in bad)
    lines += [f"- bad request (guidance 3e38) under load (two 60-step requests running): median {statistics.median(bad_ms):.1f} ms, max {bad_ms[-1]:.1f} ms (target 50 ms)"]

    # A 10 MB prompt: refused, and the orchestrator's memory after it.
    before = stub_rss_kib(repo, "flux")
    huge = timed(client, b"x" * (10 << 20), 4)
    after = stub_rss_kib(repo, "flux")
    lines += [f"- 10 MB prompt: refused={not huge[1]} in {huge[0] * 1e3:.0f} ms; flux stubs' RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after"]

    # Cancellation: a 60-step request cancelled after ~0.5 s over gRPC.
    grpc = grpcclient.InferenceServerClient(url=grpc_url.removeprefix("http://"))
    calls = transformer_calls(client)
    started = time.perf_counter()
    done = threading.Event()
    future = grpc.async_infer("flux", inputs(grpcclient, "cancel me", 60), callback=lambda result, error: done.set())
    # Cancel once the loop has run 2 steps: it must stop within one more.
    while transformer_calls(client) - calls < 2:
        time.sleep(0.01)
    future.cancel()
    at_cancel = transformer_calls(client) - calls
    done.wait(60)
    time.sleep(2.0)
    ran = transformer_calls(client) - calls
    lines += [f"- a 60-step request cancelled (gRPC) after {at_cancel} transformer steps: {ran} of 60 steps ran in all"]
    text = "\n".join(lines) + "\n"
    print(text)
    open(out, "w").write(text)


if __name__ == "__main__":
    main()
