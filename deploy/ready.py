#!/usr/bin/env python3
"""Probes of a fluxbuild Triton server, for the image's HEALTHCHECK and the Helm chart's and
KServe's probes.

Readiness (default): /v2/health/ready and /v2/models/<model>/ready for each model (default: the
five `fluxbuild package` writes). Exit 0 when all answer 200, else 1 with the first that did not.

Liveness (`--live`): the server answers /v2/health/live, and every READY model served by the
Python backend still has a backend stub process for each of its instances. Triton keeps such a model READY after its stub
died (every request then fails with 500), so without this check a pod whose `flux` stub was killed
(by the OOM killer, say) would stay live and serve nothing but errors; failing liveness makes the
kubelet restart the container, which is what `fluxbuild serve`'s supervisor does outside
Kubernetes. Run it inside the server's container: it reads /proc."""
import argparse
import collections
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

MODELS = ["clip", "t5", "transformer", "vae_decoder", "flux"]
STUB = "triton_python_backend_stub"


def status_of(url, path, timeout, body=None):
    """(HTTP status, parsed JSON body or None); OSError when the server does not answer."""
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data), timeout=timeout) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, None


def ready(args):
    paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in args.models.split(",") if m]
    for path in paths:
        try:
            status, _ = status_of(args.url, path, args.timeout)
        except OSError as e:
            return f"not ready: {path}: {e}"
        if status != 200:
            return f"not ready: {path} answered {status}"
    return None


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0")]


def server_pid(port):
    """The tritonserver serving HTTP on `port` (its --http-port, 8000 when not given), or None.
    On a host with several servers, only its stubs count."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = cmdline(pid)
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "tritonserver":
            continue
        http_port = 8000
        for i, arg in enumerate(argv):
            if arg.startswith("--http-port="):
                http_port = int(arg.split("=", 1)[1])
            elif arg == "--http-port" and i + 1 < len(argv):
                http_port = int(argv[i + 1])
        if http_port == port:
            return pid
    return None


def live_stub_models(server):
    """Per model, its live (not zombie) Python backend stubs, of `server` when known: a stub's
    arguments are <repository>/<model>/<version>/model.py, its shared memory, two sizes, and its
    server's pid."""
    models = collections.Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                # pid (comm) state ...: comm may hold spaces, so split after the last ')'.
                state = f.read().rsplit(")", 1)[1].split()[0]
            argv = cmdline(pid)
        except (OSError, IndexError):
            continue
        if state == "Z" or not argv or os.path.basename(argv[0]) != STUB:
            continue
        if server is not None and (len(argv) < 6 or argv[5] != server):
            continue
        for arg in argv[1:]:
            if os.path.basename(arg) == "model.py":
                models[os.path.basename(os.path.dirname(os.path.dirname(arg)))] += 1
    return models


def live(args):
    try:
        status, _ = status_of(args.url, "/v2/health/live", args.timeout)
        if status != 200:
            return f"not live: /v2/health/live answered {status}"
        status, index = status_of(args.url, "/v2/repository/index", args.timeout, body={})
        if status != 200 or not isinstance(index, list):
            return f"not live: /v2/repository/index answered {status}"
        python = {}
        for model in (m["name"] for m in index if m.get("state") == "READY"):
            status, config = status_of(args.url, f"/v2/models/{model}/config", args.timeout)
            if status == 200 and isinstance(config, dict) and config.get("backend") == "python":
                groups = config.get("instance_group") or [{}]
                python[model] = max(1, sum(int(g.get("count", 1)) for g in groups))
    except OSError as e:
        return f"not live: {args.url}: {e}"
    stubs = live_stub_models(server_pid(urllib.parse.urlparse(args.url).port or 80))
    # One dead instance fails every request routed to it (`flux` runs 8 by default): it counts.
    dead = [f"{m} ({stubs[m]} of {n} instances)" for m, n in python.items() if stubs[m] < n]
    if dead:
        return f"not live: model(s) {', '.join(dead)} READY without a live {STUB} process each (a backend died)"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names (readiness)")
    parser.add_argument("--live", action="store_true", help="check liveness (server and backend stubs) instead")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    failure = live(args) if args.live else ready(args)
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
