#!/usr/bin/env python3
"""Probes of a fluxbuild Triton server, for the image's HEALTHCHECK and the Helm chart's and
KServe's probes.

Readiness (default): /v2/health/ready and /v2/models/<model>/ready for each model (default: the
five `fluxbuild package` writes). Exit 0 when all answer 200, else 1 with the first that did not.

Liveness (`--live`): the server answers /v2/health/live, and every READY model served by the
Python backend still has its backend stub process. Triton keeps such a model READY after its stub
died (every request then fails with 500), so without this check a pod whose `flux` stub was killed
(by the OOM killer, say) would stay live and serve nothing but errors; failing liveness makes the
kubelet restart the container, which is what `fluxbuild serve`'s supervisor does outside
Kubernetes. Run it inside the server's container: it reads /proc."""
import argparse
import json
import os
import sys
import urllib.error
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


def live_stub_models():
    """Models with a live (not zombie) Python backend stub: the stub's arguments hold
    <repository>/<model>/<version>/model.py."""
    models = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                # pid (comm) state ...: comm may hold spaces, so split after the last ')'.
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except (OSError, IndexError):
            continue
        if state == "Z" or not argv or os.path.basename(argv[0]) != STUB:
            continue
        for arg in argv[1:]:
            if os.path.basename(arg) == "model.py":
                models.add(os.path.basename(os.path.dirname(os.path.dirname(arg))))
    return models


def live(args):
    try:
        status, _ = status_of(args.url, "/v2/health/live", args.timeout)
        if status != 200:
            return f"not live: /v2/health/live answered {status}"
        status, index = status_of(args.url, "/v2/repository/index", args.timeout, body={})
        if status != 200 or not isinstance(index, list):
            return f"not live: /v2/repository/index answered {status}"
        python = []
        for model in (m["name"] for m in index if m.get("state") == "READY"):
            status, config = status_of(args.url, f"/v2/models/{model}/config", args.timeout)
            if status == 200 and isinstance(config, dict) and config.get("backend") == "python":
                python.append(model)
    except OSError as e:
        return f"not live: {args.url}: {e}"
    stubs = live_stub_models()
    dead = [m for m in python if m not in stubs]
    if dead:
        return f"not live: model(s) {', '.join(dead)} READY without a live {STUB} process (the backend died)"
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
