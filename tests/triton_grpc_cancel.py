"""Sends a long request to a Triton server's `flux` model over gRPC (NVIDIA's tritonclient), cancels
it once the transformer has run 2 of its steps, and prints one JSON line: the transformer calls
finished when the client cancelled and in all (once the count has settled).

usage: triton_grpc_cancel.py HTTP_URL GRPC_URL STEPS
"""

import json
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def transformer_calls(client):
    stats = client.get_inference_statistics("transformer")["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def main():
    http_url, grpc_url, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = httpclient.InferenceServerClient(url=http_url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(url=grpc_url)
    inputs = []
    for name, dtype, value in (
        ("prompt", "BYTES", np.array([[b"cancel me"]], dtype=np.object_)),
        ("steps", "INT32", np.array([[steps]], dtype=np.int32)),
        ("seed", "INT64", np.array([[7]], dtype=np.int64)),
    ):
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    before = transformer_calls(client)
    future = grpc.async_infer("flux", inputs, callback=lambda result, error: None)
    deadline = time.monotonic() + 120
    while transformer_calls(client) - before < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    future.cancel()
    at_cancel = transformer_calls(client) - before
    ran = at_cancel
    while True:  # settled: no new call for a second
        time.sleep(1.0)
        now = transformer_calls(client) - before
        if now == ran:
            break
        ran = now
    print(json.dumps({"at_cancel": at_cancel, "ran": ran}))


if __name__ == "__main__":
    main()
