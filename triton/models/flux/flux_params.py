"""The flux model's config.pbtxt `parameters`, typed: what `fluxbuild package` writes
(`OrchestratorParameters` in contract/src/orchestrator.rs, field name = key; a test checks that both
declare the same keys and that every key here parses from a packaged config). model.py and its
modules read parameters only through `read`. Shipped next to model.py.

Every value is a string in the config: numbers in decimal, booleans as true/false, request_rules
and input_dtypes as JSON, fallback lists comma-separated. A missing or ill-typed key is an error
naming it; the fields with a default are optional tuning the package does not write.
"""

import dataclasses
import json

TARGETS = ("cpu", "gpu")
VARIANTS = ("dev", "schnell")
STEP_ORDERS = ("shortest_first", "concurrent")


class ParameterError(ValueError):
    """A parameter of the flux config is missing or not of its type."""


def _bool(text):
    if text not in ("true", "false"):
        raise ValueError("not true or false")
    return text == "true"


def _names(text):
    return [name for name in text.split(",") if name]


def _choice(choices):
    def parse(text):
        if text not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return text

    return parse


# How each declared type is read from its string.
PARSERS = {str: str, int: int, float: float, bool: _bool, dict: json.loads, list: _names}


def _field(parse=None, **kwargs):
    return dataclasses.field(metadata={"parse": parse} if parse else {}, **kwargs)


@dataclasses.dataclass(frozen=True)
class FluxParams:
    target: str = _field(_choice(TARGETS))
    variant: str = _field(_choice(VARIANTS))
    default_height: int = _field()
    default_width: int = _field()
    default_steps: int = _field()
    default_guidance: float = _field()
    default_max_sequence_length: int = _field()
    # The validation table (generate::request::Limits in the Rust code).
    request_rules: dict = _field()
    max_batch_pixels: int = _field()
    network_timeout_ms: int = _field()
    # Jobs running the pipeline at once; the other instances stay free to refuse bad requests.
    running_jobs: int = _field()
    clip_length: int = _field()
    clip_pad_token: str = _field()
    t5_pad_token: str = _field()
    vae_scaling_factor: float = _field()
    vae_shift_factor: float = _field()
    network_max_batch: int = _field()
    # Input name -> numpy dtype name (float32, float16, bfloat16, int64).
    input_dtypes: dict = _field()
    model_clip: str = _field()
    model_t5: str = _field()
    model_transformer: str = _field()
    model_vae_decoder: str = _field()
    fallback_clip: list = _field()
    fallback_t5: list = _field()
    fallback_transformer: list = _field()
    fallback_vae_decoder: list = _field()
    # Optional tuning: the torch tensor path on the cpu target; the step scheduler's order.
    torch_on_cpu: bool = _field(default=False)
    step_order: str = _field(_choice(STEP_ORDERS), default="shortest_first")

    def models_of(self, network):
        """The network's models, primary first, then the fallbacks in order."""
        return [getattr(self, f"model_{network}")] + getattr(self, f"fallback_{network}")


def declared():
    """{key: (type name, required)} of every parameter this reader knows."""
    return {f.name: (f.type.__name__, f.default is dataclasses.MISSING) for f in dataclasses.fields(FluxParams)}


def parse(strings):
    """FluxParams from {key: string value}; other keys are ignored."""
    values = {}
    for f in dataclasses.fields(FluxParams):
        if f.name not in strings:
            if f.default is dataclasses.MISSING:
                raise ParameterError(f"config.pbtxt of flux lacks the parameter '{f.name}'")
            continue
        text = strings[f.name]
        try:
            value = (f.metadata.get("parse") or PARSERS[f.type])(text)
        except ValueError as e:
            raise ParameterError(f"config.pbtxt of flux: parameter '{f.name}' is {text!r}, not a {f.type.__name__} ({e})") from None
        if not isinstance(value, f.type):
            raise ParameterError(f"config.pbtxt of flux: parameter '{f.name}' is {text!r}, not a {f.type.__name__}")
        values[f.name] = value
    return FluxParams(**values)


def read(model_config):
    """FluxParams from Triton's `args["model_config"]` (the model config as JSON)."""
    parameters = json.loads(model_config).get("parameters", {})
    return parse({key: value["string_value"] for key, value in parameters.items()})
