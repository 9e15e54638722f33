"""One FLUX network (clip, t5, transformer or vae_decoder) served on the CPU: a Triton
Python-backend model that runs its ONNX graph with ONNX Runtime. `fluxbuild package --target cpu`
writes it beside the graph (`<network>/1/model.onnx` + `model.onnx.data`); the gpu target serves
the same interface from TensorRT plans instead.

Requests of one dynamic batch whose tensors agree in every dimension but the first run as one
ONNX Runtime call; every request gets its own response (an error names the network).

Memory (docs/serving.md): `max_run_batch` (config parameter; 0 = no limit) caps the samples of one
ONNX Runtime run: the VAE decoder runs one image at a time, so its full-resolution activations are
those of one image whatever the batch (each sample's result does not depend on the others: the
outputs are the batched run's, byte for byte). ONNX Runtime's arena is off and the C heap is
trimmed after each batch, so a large request's memory goes back to the system when it is done.
"""

import ctypes
import ctypes.util
import json
import os

import numpy as np
import onnx_network_params
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        params = onnx_network_params.read(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], params.onnx_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = params.intra_op_threads
        options.inter_op_num_threads = 1
        # Without the arena, a large request's buffers go back to the system when it is done
        # (with it, the VAE decoder kept its peak, 10.7 GB after a 4 x 1024^2 batch: issue 14 D12).
        options.enable_cpu_mem_arena = False
        # The session settings of every fluxbuild graph (session_config.json in the fluxbuild sources).
        for key, value in params.ort_session_config.items():
            options.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise pb_utils.TritonModelException(f"{self.name}: ONNX Runtime cannot load {path}: {e}")
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0
        self.max_run_batch = params.max_run_batch
        libc = ctypes.util.find_library("c")
        self.malloc_trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
        graph_inputs = {i.name for i in self.session.get_inputs()}
        missing = [n for n in self.inputs if n not in graph_inputs]
        if missing:
            raise pb_utils.TritonModelException(f"{self.name}: {path} has no inputs {missing} (it has {sorted(graph_inputs)})")

    def _feeds(self, request):
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = tensor.as_numpy()
        return feeds

    def _run(self, feeds, outputs):
        n = next(iter(feeds.values())).shape[0] if feeds else 0
        step = self.max_run_batch
        if not self.batched or step <= 0 or n <= step:
            return dict(zip(outputs, self.session.run(outputs, feeds)))
        # Slices of at most `max_run_batch` samples, written into the outputs in order.
        merged = {}
        for start in range(0, n, step):
            part = self.session.run(outputs, {k: v[start : start + step] for k, v in feeds.items()})
            for name, value in zip(outputs, part):
                if name not in merged:
                    merged[name] = np.empty((n,) + value.shape[1:], dtype=value.dtype)
                merged[name][start : start + value.shape[0]] = value
        return merged

    def execute(self, requests):
        parsed = []
        for request in requests:
            wanted = [n for n in request.requested_output_names() if n in self.outputs] or self.outputs
            parsed.append((self._feeds(request), wanted))
        results = [None] * len(requests)
        # One call for the whole dynamic batch where shapes allow.
        if self.batched and len(requests) > 1:
            shapes = {tuple((k, v.shape[1:]) for k, v in sorted(f.items())) for f, _ in parsed}
            if len(shapes) == 1:
                outputs = sorted({n for _, wanted in parsed for n in wanted})
                try:
                    feeds = {k: np.concatenate([f[k] for f, _ in parsed]) for k in parsed[0][0]}
                    merged = self._run(feeds, outputs)
                    start = 0
                    for r, (f, wanted) in enumerate(parsed):
                        n = next(iter(f.values())).shape[0]
                        results[r] = {k: merged[k][start : start + n] for k in wanted}
                        start += n
                except Exception:
                    results = [None] * len(requests)  # run them one by one below to pin the failure
        responses = []
        for r, (feeds, wanted) in enumerate(parsed):
            try:
                out = results[r] if results[r] is not None else self._run(feeds, wanted)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in out.items()]))
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}")))
        del parsed, results
        if self.malloc_trim is not None:
            # glibc keeps freed heap pages (small and mid-sized buffers) for reuse: give them back.
            self.malloc_trim(0)
        return responses
