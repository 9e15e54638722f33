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


def in_background(http_url, prompt, steps):
    """A request on its own thread with its own client (tritonclient's HTTP client is not thread-safe)."""

    def run():
        timed(httpclient.InferenceServerClient(url=http_url.removeprefix("http://"), network_timeout=600), prompt, steps)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def transformer_calls(client):
    stats = client.get_inference_statistics("transformer")["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def settled_calls(client):
    """The transformer's call count once it has not moved for a second."""
    last = transformer_calls(client)
    while True:
        time.sleep(1.0)
        now = transformer_calls(client)
        if now == last:
            return now
        last = now


def plain_json_ms(http_url, prompt):
    """(HTTP status, ms) of a plain-JSON request (no binary tensors), as curl users send it."""
    import http.client
    import json
    from urllib.parse import urlparse

    url = urlparse(http_url)
    body = json.dumps({"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": [prompt]}]})
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    started = time.perf_counter()
    connection.request("POST", "/v2/models/flux/infer", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status, (time.perf_counter() - started) * 1e3


def stub_rss_kib(repo, model):
    """(private, shared) resident KiB of the model's stub processes: RssAnon is their own memory;
    RssShmem is the Python backend's shared-memory pool they have touched (tensors pass through it)."""
    import os

    private = shared = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            if f"{repo}/{model}/1/model.py" in cmdline:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("RssAnon:"):
                        private += int(line.split()[1])
                    elif line.startswith("RssShmem:"):
                        shared += int(line.split()[1])
        except OSError:
            pass
    return private, shared


def set_step_order(client, http_url, order):
    """Reloads flux with the config parameter step_order (a config override, as Triton's load API allows)."""
    import json

    config = client.get_model_config("flux")
    config.setdefault("parameters", {})["step_order"] = {"string_value": order}
    client.load_model("flux", config=json.dumps(config))
    while not client.is_model_ready("flux"):
        time.sleep(0.1)
    for thread in [in_background(http_url, f"warm up {i}", 4) for i in range(8)]:  # every instance
        thread.join()


def pairs(client, http_url, count):
    """(alone, beside) seconds of a 4-step request, alone and while a 60-step request runs, `count` times."""
    alone, beside = [], []
    for _ in range(count):
        alone.append(timed(client, "a red fox", 4)[0])
        calls = transformer_calls(client)
        long = in_background(http_url, "a long one", 60)
        while transformer_calls(client) - calls < 2:  # the long loop is running
            time.sleep(0.01)
        beside.append(timed(client, "a red fox", 4)[0])
        long.join()
    return alone, beside


def main():
    http_url, grpc_url, repo, out = sys.argv[1:5]
    client = httpclient.InferenceServerClient(url=http_url.removeprefix("http://"), concurrency=8, network_timeout=600)
    lines = ["# Scheduling, cancellation and admission (tiny fixture, cpu target, 64x64)", ""]

    # Alone and next to a 60-step request, in pairs (the machine's load drifts; the pairs share it),
    # with the step scheduler and, as the reference, with every job stepping at once (flux reloaded
    # with the parameter step_order "concurrent": the behaviour without the scheduler).
    for order in ("concurrent", "shortest_first"):
        set_step_order(client, http_url, order)
        alone, beside = pairs(client, http_url, 15)
        a, b = statistics.median(alone), statistics.median(beside)
        ratios = sorted(y / x for x, y in zip(alone, beside))
        lines += [
            f"- step order {order}: 4-step request alone: median {a * 1e3:.0f} ms; next to a 60-step request: median "
            f"{b * 1e3:.0f} ms ({b / a:.2f}x; median of the pairwise ratios {statistics.median(ratios):.2f}, "
            f"all: {', '.join(f'{r:.2f}' for r in ratios)}; target 1.2x)"
        ]

    # Bad requests under load: two 60-step requests and a 4-step stream in flight.
    load = [in_background(http_url, f"load {i}", 60) for i in range(2)]
    calls = transformer_calls(client)
    while transformer_calls(client) - calls < 2:
        time.sleep(0.01)
    bad = [timed(client, "a cat", 4, guidance=3e38) for _ in range(10)]
    for t in load:
        t.join()
    assert not any(ok for _, ok in bad)
    bad_ms = sorted(t * 1e3 for t, _ in bad)
    lines += [f"- bad request (guidance 3e38) under load (two 60-step requests running): median {statistics.median(bad_ms):.1f} ms, max {bad_ms[-1]:.1f} ms (target 50 ms)"]

    # A 10 MB prompt: refused (binary tensor, as tritonclient sends it, and plain JSON), and the
    # orchestrator's memory after it.
    before = stub_rss_kib(repo, "flux")
    huge = [timed(client, b"x" * (10 << 20), 4) for _ in range(3)]
    plain = [plain_json_ms(http_url, "x" * (10 << 20)) for _ in range(3)]
    after = stub_rss_kib(repo, "flux")
    huge_ms = sorted(t * 1e3 for t, _ in huge)
    lines += [
        f"- 10 MB prompt (binary tensor): refused={not any(ok for _, ok in huge)}, median {statistics.median(huge_ms):.0f} ms, "
        f"max {huge_ms[-1]:.0f} ms; as plain JSON: HTTP {sorted(set(code for code, _ in plain))}, median "
        f"{statistics.median(ms for _, ms in plain):.0f} ms (target 100 ms); flux stubs' private memory (RssAnon) "
        f"{before[0] / 1024:.0f} MiB before, {after[0] / 1024:.0f} MiB after (shared-memory pool touched: "
        f"{before[1] / 1024:.0f} -> {after[1] / 1024:.0f} MiB)"
    ]

    # Cancellation: a 60-step request cancelled (gRPC) once its loop has run 2 steps, three times.
    grpc = grpcclient.InferenceServerClient(url=grpc_url.removeprefix("http://"))
    extra = []
    for _ in range(3):
        calls = transformer_calls(client)
        future = grpc.async_infer("flux", inputs(grpcclient, "cancel me", 60), callback=lambda result, error: None)
        while transformer_calls(client) - calls < 2:
            time.sleep(0.01)
        future.cancel()
        at_cancel = transformer_calls(client) - calls  # the step in flight now may still finish
        ran = settled_calls(client) - calls
        extra.append((at_cancel, ran))
    lines += [
        "- a 60-step request cancelled (gRPC) after its 2nd step, 3 times: steps finished when cancelled -> in all: "
        + ", ".join(f"{a} -> {r}" for a, r in extra)
        + f"; at most {max(r - a for a, r in extra)} step(s) after the cancel (target 1: the step in flight)"
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    open(out, "w").write(text)


if __name__ == "__main__":
    main()
