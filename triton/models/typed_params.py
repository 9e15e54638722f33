"""A Triton model's config.pbtxt `parameters` read into a frozen dataclass whose field names are
the keys (the Rust side: `Parameters` in contract/src/parameters.rs). Shipped beside each reader
(flux_params.py, onnx_network_params.py) in the model's version folder.

Every value is a string in the config: numbers in decimal, booleans as true/false, dict fields as
JSON, list fields comma-separated. A missing or ill-typed key is an error naming the model and the
key; fields with a default are optional tuning the package does not write.
"""

import dataclasses
import json


class ParameterError(ValueError):
    """A parameter of a model's config is missing or not of its type."""


def _bool(text):
    if text not in ("true", "false"):
        raise ValueError("not true or false")
    return text == "true"


def _names(text):
    return [name for name in text.split(",") if name]


# How each declared type is read from its string.
PARSERS = {str: str, int: int, float: float, bool: _bool, dict: json.loads, list: _names}


def field(parse=None, **kwargs):
    """A parameter; `parse` reads its string when the declared type's parser is not enough."""
    return dataclasses.field(metadata={"parse": parse} if parse else {}, **kwargs)


def choice(choices):
    """A parser that accepts one of `choices`."""

    def parse(text):
        if text not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return text

    return parse


def declared(cls):
    """{key: (type name, required)} of every parameter of the dataclass `cls`."""
    return {f.name: (f.type.__name__, f.default is dataclasses.MISSING) for f in dataclasses.fields(cls)}


def parse(cls, model, strings):
    """`cls` from {key: string value} of `model`'s config; other keys are ignored."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in strings:
            if f.default is dataclasses.MISSING:
                raise ParameterError(f"config.pbtxt of {model} lacks the parameter '{f.name}'")
            continue
        text = strings[f.name]
        try:
            value = (f.metadata.get("parse") or PARSERS[f.type])(text)
        except ValueError as e:
            raise ParameterError(
                f"config.pbtxt of {model}: parameter '{f.name}' is {text!r}, expected {f.type.__name__} ({e})"
            ) from None
        if not isinstance(value, f.type):
            raise ParameterError(f"config.pbtxt of {model}: parameter '{f.name}' is {text!r}, expected {f.type.__name__}")
        values[f.name] = value
    return cls(**values)


def read(cls, model_config):
    """`cls` from Triton's `args["model_config"]` (the model config as JSON)."""
    config = json.loads(model_config)
    parameters = config.get("parameters", {})
    return parse(cls, config.get("name", "the model"), {key: value["string_value"] for key, value in parameters.items()})
