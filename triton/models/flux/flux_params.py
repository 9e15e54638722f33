"""The flux model's config.pbtxt `parameters`, typed: what `fluxbuild package` writes
(`OrchestratorParameters` in contract/src/orchestrator.rs, field name = key; a test checks that both
declare the same keys and that every key here parses from a packaged config). model.py and its
modules read parameters only through `read`. Shipped next to model.py.

Encoding and errors: typed_params.py (request_rules and input_dtypes are JSON, the fallback lists
comma-separated); the fields with a default are optional tuning the package does not write.
"""

import dataclasses

import typed_params
from typed_params import choice, field

TARGETS = ("cpu", "gpu")
VARIANTS = ("dev", "schnell")
STEP_ORDERS = ("shortest_first", "concurrent")


@dataclasses.dataclass(frozen=True)
class FluxParams:
    target: str = field(choice(TARGETS))
    variant: str = field(choice(VARIANTS))
    default_height: int = field()
    default_width: int = field()
    default_steps: int = field()
    default_guidance: float = field()
    default_max_sequence_length: int = field()
    # The validation table (generate::request::Limits in the Rust code).
    request_rules: dict = field()
    max_batch_pixels: int = field()
    network_timeout_ms: int = field()
    # Jobs running the pipeline at once; the other instances stay free to refuse bad requests.
    running_jobs: int = field()
    clip_length: int = field()
    clip_pad_token: str = field()
    t5_pad_token: str = field()
    vae_scaling_factor: float = field()
    vae_shift_factor: float = field()
    network_max_batch: int = field()
    # Input name -> numpy dtype name (float32, float16, bfloat16, int64).
    input_dtypes: dict = field()
    model_clip: str = field()
    model_t5: str = field()
    model_transformer: str = field()
    model_vae_decoder: str = field()
    fallback_clip: list = field()
    fallback_t5: list = field()
    fallback_transformer: list = field()
    fallback_vae_decoder: list = field()
    # Optional tuning: the torch tensor path on the cpu target; the step scheduler's order.
    torch_on_cpu: bool = field(default=False)
    step_order: str = field(choice(STEP_ORDERS), default="shortest_first")

    def models_of(self, network):
        """The network's models, primary first, then the fallbacks in order."""
        return [getattr(self, f"model_{network}")] + getattr(self, f"fallback_{network}")


def declared():
    """{key: (type name, required)} of every parameter this reader knows."""
    return typed_params.declared(FluxParams)


def read(model_config):
    """FluxParams from Triton's `args["model_config"]` (the model config as JSON)."""
    return typed_params.read(FluxParams, model_config)
