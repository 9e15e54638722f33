"""A cpu network model's config.pbtxt `parameters`, typed: what `fluxbuild package` writes
(`OnnxNetworkParameters` in contract/src/onnx_network.rs, field name = key; a test checks that both
declare the same keys and that every key here parses from a packaged config). model.py reads
parameters only through `read`. Shipped next to model.py; encoding and errors: typed_params.py.
"""

import dataclasses

import typed_params
from typed_params import field


@dataclasses.dataclass(frozen=True)
class OnnxNetworkParams:
    # The graph in the version folder.
    onnx_file: str = field()
    # ONNX Runtime's intra-op threads; 0 lets ONNX Runtime use one per core.
    intra_op_threads: int = field()
    # ONNX Runtime session config entries: fluxbuild's settings (session_config.json).
    ort_session_config: dict = field()
    # The most samples one ONNX Runtime run takes (0: the whole dynamic batch in one run).
    max_run_batch: int = field()


def declared():
    """{key: (type name, required)} of every parameter this reader knows."""
    return typed_params.declared(OnnxNetworkParams)


def read(model_config):
    """OnnxNetworkParams from Triton's `args["model_config"]` (the model config as JSON)."""
    return typed_params.read(OnnxNetworkParams, model_config)
