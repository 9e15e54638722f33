"""Sends one prompt to a Triton server's `flux` model with NVIDIA's own Python client
(tritonclient[http], binary tensors) and writes the image's raw RGB bytes: the Rust tests run it
from the Triton venv to show the Rust client and the reference client get the same image.

usage: triton_python_client.py URL PROMPT SEED HEIGHT WIDTH STEPS OUT.rgb
"""

import sys

import numpy as np
import tritonclient.http as httpclient


def main():
    url, prompt, seed, height, width, steps, out = sys.argv[1:8]
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    inputs = []
    for name, dtype, value in (
        ("prompt", "BYTES", np.array([[prompt.encode()]], dtype=np.object_)),
        ("seed", "INT64", np.array([[int(seed)]], dtype=np.int64)),
        ("height", "INT32", np.array([[int(height)]], dtype=np.int32)),
        ("width", "INT32", np.array([[int(width)]], dtype=np.int32)),
        ("steps", "INT32", np.array([[int(steps)]], dtype=np.int32)),
    ):
        tensor = httpclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    result = client.infer("flux", inputs, outputs=[httpclient.InferRequestedOutput("image", binary_data=True)])
    image = result.as_numpy("image")
    assert image.dtype == np.uint8 and image.shape == (1, int(height), int(width), 3), (image.dtype, image.shape)
    with open(out, "wb") as f:
        f.write(image.tobytes())


if __name__ == "__main__":
    main()
