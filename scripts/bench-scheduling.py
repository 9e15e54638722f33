"""Scheduling, cancellation and admission figures of a running `fluxbuild serve` deployment of the
tiny fixture (benchmark, not a test; `make bench-scheduling` writes bench/scheduling.md).

usage: bench-scheduling.py HTTP_URL GRPC_URL REPO OUT.md TRITONSERVER_PID
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


def posted_ms(http_url, body, headers):
    """(HTTP status, ms) of one POST of a prebuilt body to flux, on a fresh connection."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(http_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    started = time.perf_counter()
    connection.request("POST", "/v2/models/flux/infer", body, headers)
    response = connection.getresponse()
    response.read()
    return response.status, (time.perf_counter() - started) * 1e3


def plain_json(prompt):
    """A plain-JSON request body (no binary tensors), as curl users send it, and its headers."""
    import json

    body = json.dumps({"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": [prompt]}]})
    return body, {"Content-Type": "application/json"}


def binary(prompt):
    """A request body with the prompt as a binary tensor (the KServe binary extension tritonclient
    uses), built once: what the server takes, without the client library's own time."""
    import json

    header = json.dumps(
        {"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(prompt)}}]}
    ).encode()
    body = header + len(prompt).to_bytes(4, "little") + prompt
    return body, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


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


def reload_flux(client, http_url, step_order, instances=None, running_jobs=None):
    """Reloads flux with a config override (as Triton's load API allows): the parameter step_order,
    and optionally the instance count and the parameter running_jobs."""
    import json

    config = client.get_model_config("flux")
    parameters = config.setdefault("parameters", {})
    parameters["step_order"] = {"string_value": step_order}
    if instances is not None:
        config["instance_group"][0]["count"] = instances
        parameters["running_jobs"] = {"string_value": str(running_jobs)}
    client.load_model("flux", config=json.dumps(config))
    while not client.is_model_ready("flux"):
        time.sleep(0.1)
    count = client.get_model_config("flux")["instance_group"][0]["count"]
    for thread in [in_background(http_url, f"warm up {i}", 4) for i in range(2 * count)]:  # every instance
        thread.join()
    return count, int(client.get_model_config("flux")["parameters"]["running_jobs"]["string_value"])


def step_table_jobs(server_pid):
    """(running, waiting) jobs in the flux instances' shared step table (model.py StepScheduler:
    records of pid, token, steps left, registration time, state after a first record of counts)."""
    import glob
    import struct

    record = struct.Struct("<qqqqq")
    running = waiting = 0
    for path in glob.glob(f"/dev/shm/fluxbuild-steps-{server_pid}-flux"):
        data = open(path, "rb").read()
        for offset in range(record.size, len(data) - record.size + 1, record.size):
            pid, _, left, _, state = record.unpack_from(data, offset)
            if pid and left != -1:
                running += state == 1
                waiting += state == 0
    return running, waiting


def bad_requests_while_busy(client, http_url, server_pid, instances, running_jobs):
    """Milliseconds of 10 bad requests (guidance 3e38) sent through tritonclient and 10 as a plain
    POST, alternating, while every running slot holds a 60-step job (seen in the step table) and one
    more valid request waits (in a spare instance, or in Triton's queue without one); and whether
    those jobs were all still unfinished when the last refusal came."""
    load = []
    for i in range(running_jobs + 1):  # spaced beyond the batching window: one instance each
        load.append(in_background(http_url, f"load {i}", 60))
        time.sleep(0.15)
    deadline = time.monotonic() + 60
    while step_table_jobs(server_pid)[0] < running_jobs:
        assert time.monotonic() < deadline, f"the step table never showed {running_jobs} running jobs"
        time.sleep(0.01)
    while instances > running_jobs and step_table_jobs(server_pid)[1] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the last valid request inside Triton
    import json

    body = json.dumps(
        {
            "inputs": [
                {"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": ["a cat"]},
                {"name": "guidance", "shape": [1, 1], "datatype": "FP32", "data": [3e38]},
            ]
        }
    )
    headers = {"Content-Type": "application/json"}
    through_client, posted = [], []
    for _ in range(10):
        elapsed, ok = timed(client, "a cat", 4, guidance=3e38)
        assert not ok
        through_client.append(elapsed * 1e3)
        status, ms = posted_ms(http_url, body, headers)
        assert status == 400, status
        posted.append(ms)
    busy = all(t.is_alive() for t in load)
    for t in load:
        t.join()
    return sorted(through_client), sorted(posted), busy


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
    http_url, grpc_url, repo, out, server_pid = sys.argv[1:6]
    client = httpclient.InferenceServerClient(url=http_url.removeprefix("http://"), concurrency=8, network_timeout=600)
    lines = ["# Scheduling, cancellation and admission (tiny fixture, cpu target, 64x64)", ""]

    # Alone and next to a 60-step request, in pairs (the machine's load drifts; the pairs share it),
    # with the step scheduler and, as the reference, with every job stepping at once (flux reloaded
    # with the parameter step_order "concurrent": the behaviour without the scheduler).
    for order in ("concurrent", "shortest_first"):
        instances, running_jobs = reload_flux(client, http_url, order)
        alone, beside = pairs(client, http_url, 15)
        a, b = statistics.median(alone), statistics.median(beside)
        ratios = sorted(y / x for x, y in zip(alone, beside))
        lines += [
            f"- step order {order} ({instances} instances, {running_jobs} running jobs): 4-step request alone: median "
            f"{a * 1e3:.0f} ms; next to a 60-step request: median {b * 1e3:.0f} ms ({b / a:.2f}x; median of the "
            f"pairwise ratios {statistics.median(ratios):.2f}, all: {', '.join(f'{r:.2f}' for r in ratios)}; target 1.2x)"
        ]

    # Bad requests while every running slot is busy and one more valid request waits: with spare
    # instances (the packaged default) and, as the reference, with as many instances as running
    # jobs (then the bad request queues in Triton behind the valid ones).
    for instances, running_jobs in ((running_jobs, running_jobs), (instances, running_jobs)):
        reload_flux(client, http_url, "shortest_first", instances, running_jobs)
        through_client, posted, busy = bad_requests_while_busy(client, http_url, server_pid, instances, running_jobs)
        lines += [
            f"- bad request (guidance 3e38) with {instances} instances, {running_jobs} running jobs, while {running_jobs} "
            f"60-step jobs run and 1 more waits (still all unfinished at the last refusal: {busy}), 10 each way (target 50 ms): "
            f"tritonclient median {statistics.median(through_client):.1f} ms, max {through_client[-1]:.1f} ms "
            f"(all {', '.join(f'{t:.0f}' for t in through_client)}); plain POST median {statistics.median(posted):.1f} ms, "
            f"max {posted[-1]:.1f} ms (all {', '.join(f'{t:.0f}' for t in posted)})"
        ]

    # A 10 MB prompt, 20 times each way: through tritonclient (binary tensor; its own serializing
    # and sending of 10 MB included), the same binary body prebuilt and posted, and plain JSON;
    # and the orchestrator's memory before and after.
    before = stub_rss_kib(repo, "flux")
    huge = [timed(client, b"x" * (10 << 20), 4) for _ in range(20)]
    prebuilt = [posted_ms(http_url, *binary(b"x" * (10 << 20))) for _ in range(20)]
    plain = [posted_ms(http_url, *plain_json("x" * (10 << 20))) for _ in range(20)]
    after = stub_rss_kib(repo, "flux")
    assert not any(ok for _, ok in huge)

    def spread(ms):
        ms = sorted(ms)
        return f"median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms"

    lines += [
        f"- 10 MB prompt, 20 times each (target 100 ms): tritonclient binary tensor: refused, "
        f"{spread(t * 1e3 for t, _ in huge)}; prebuilt binary body: HTTP {sorted(set(c for c, _ in prebuilt))}, "
        f"{spread(ms for _, ms in prebuilt)}; plain JSON: HTTP {sorted(set(c for c, _ in plain))}, {spread(ms for _, ms in plain)}; "
        f"flux stubs' private memory (RssAnon) {before[0] / 1024:.0f} MiB before, {after[0] / 1024:.0f} MiB after "
        f"(shared-memory pool touched: {before[1] / 1024:.0f} -> {after[1] / 1024:.0f} MiB)"
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
