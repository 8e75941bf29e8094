"""{{name}}: a Sluice preprocessor in Python.

UTF-8 text holding numbers separated by commas or whitespace in, one fp32
tensor of shape [1, N] out. Replace the logic in `parse` with your own;
README.md says how to build and test.
"""

import json
import re
import struct

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.types import Dtype, ItemError_InvalidInput, Tensor

# componentize-py makes a new `Preprocess` object for every call: state set
# on `self` in `init` is gone by the next call. What `init` builds lives
# here, one per instance (the host runs several and may replace one at any
# time, calling `init` again).
_config = None


def parse(text, length):
    """The numbers in `text`, checked against `length`; ValueError if not."""
    values = []
    for token in re.split(r"[,\s]+", text):
        if token == "":
            continue
        try:
            values.append(float(token))
        except ValueError:
            raise ValueError(f"`{token}` is not a number") from None
    if not values:
        raise ValueError("the input holds no numbers")
    if length is not None and len(values) != length:
        raise ValueError(f"expected {length} numbers, got {len(values)}")
    return values


class Preprocess(exports.Preprocess):
    def init(self, config: str) -> None:
        """Runs once per instance; raising Err refuses the plugin with its message."""
        global _config
        config = json.loads(config)
        unknown = sorted(set(config) - {"output", "length"})
        if unknown:
            raise Err(f"unknown field `{unknown[0]}`, expected `output` or `length`")
        if config.get("output", "input") == "":
            raise Err("`output` must not be empty")
        _config = {"output": config.get("output", "input"), "length": config.get("length")}

    def preprocess(self, items):
        """One result per item, in order: an Err fails that item alone."""
        results = []
        for item in items:
            try:
                text = bytes(item.data).decode("utf-8")
            except UnicodeDecodeError:
                results.append(Err(ItemError_InvalidInput("the input is not UTF-8 text")))
                continue
            try:
                values = parse(text, _config["length"])
            except ValueError as e:
                results.append(Err(ItemError_InvalidInput(str(e))))
                continue
            # Tensors keep a batch axis of 1: the host stacks items into batches.
            data = struct.pack(f"<{len(values)}f", *values)
            results.append(Ok([Tensor(_config["output"], Dtype.FP32, [1, len(values)], data)]))
        return results
