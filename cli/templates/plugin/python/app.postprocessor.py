"""{{name}}: a Sluice postprocessor in Python.

One score tensor in, the best class out as JSON: {"index": 1, "score": 0.75}
(with "label" when labels are configured). Replace the logic in `best` with
your own; README.md says how to build and test.
"""

import json
import struct

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.exports.postprocess import Document
from wit_world.imports.types import Dtype, ItemError_InvalidInput

# componentize-py makes a new `Postprocess` object for every call: state set
# on `self` in `init` is gone by the next call. What `init` builds lives
# here, one per instance (the host runs several and may replace one at any
# time, calling `init` again).
_config = None


def best(scores):
    """(index, score) of the highest score, ties to the lower index; None if empty."""
    found = None
    for i, s in enumerate(scores):
        if found is None or s > found[1]:
            found = (i, s)
    return found


def classify(tensors):
    name = _config["input"]
    tensor = next((t for t in tensors if t.name == name), None)
    if tensor is None:
        raise ValueError(f"no tensor named `{name}`")
    if tensor.dtype != Dtype.FP32:
        raise ValueError(f"tensor `{name}` is not fp32")
    # Shape [1, K] or [K]: the host keeps a batch axis of 1 per item.
    scores = struct.unpack(f"<{len(tensor.data) // 4}f", tensor.data)
    found = best(scores)
    if found is None:
        raise ValueError(f"tensor `{name}` is empty")
    index, score = found
    result = {"index": index, "score": score}
    labels = _config["labels"]
    if labels is not None:
        if index >= len(labels):
            raise ValueError(f"class {index} has no label")
        result["label"] = labels[index]
    return result


class Postprocess(exports.Postprocess):
    def init(self, config: str) -> None:
        """Runs once per instance; raising Err refuses the plugin with its message."""
        global _config
        config = json.loads(config)
        unknown = sorted(set(config) - {"input", "labels"})
        if unknown:
            raise Err(f"unknown field `{unknown[0]}`, expected `input` or `labels`")
        if config.get("labels") == []:
            raise Err("`labels` is empty")
        _config = {"input": config.get("input", "output"), "labels": config.get("labels")}

    def postprocess(self, items):
        """One result per item, in order: an Err fails that item alone."""
        results = []
        for item in items:
            try:
                body = json.dumps(classify(item.tensors)).encode()
                results.append(Ok(Document("application/json", body)))
            except ValueError as e:
                results.append(Err(ItemError_InvalidInput(str(e))))
        return results
