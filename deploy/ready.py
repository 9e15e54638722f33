#!/usr/bin/env python3
"""Readiness of a fluxbuild Triton server: /v2/health/ready and /v2/models/<model>/ready for each
model (default: the five `fluxbuild package` writes). Exit 0 when all answer 200, else 1 with the
first that did not. Used by the image's HEALTHCHECK and the Helm chart's readiness probe."""
import argparse
import sys
import urllib.error
import urllib.request

MODELS = ["clip", "t5", "transformer", "vae_decoder", "flux"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in args.models.split(",") if m]
    for path in paths:
        try:
            with urllib.request.urlopen(args.url + path, timeout=args.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError as e:
            print(f"not ready: {path}: {e}", file=sys.stderr)
            return 1
        if status != 200:
            print(f"not ready: {path} answered {status}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
