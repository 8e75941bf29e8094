"""classify-python: the bundled Rust `classify-postprocess`, in Python.

A Sluice postprocessor for classifiers: one score vector in (shape [K] or
[1, K]), the top-k classes out as JSON:

    {"label": "cat", "index": 3, "score": 0.91,
     "top": [{"label": "cat", "index": 3, "score": 0.91}, ...]}

Built with componentize-py against `wit/` (world `postprocessor`); see
README.md. Its results equal the Rust plugin's (CI checks it on the digits
pipeline).
"""

import json
import math
import struct

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.exports.postprocess import Document
from wit_world.imports.types import Dtype, ItemError_InvalidInput

# componentize-py makes a new `Postprocess` object for every call, so state
# kept on `self` in `init` is gone in `postprocess`. What `init` builds lives
# here, at module level: one per instance (the host runs several instances
# and may replace one at any time, calling `init` again).
_plugin = None

# Element sizes and struct formats (little-endian) of the dtypes we read.
_FORMATS = {
    Dtype.FP32: ("f", 4),
    Dtype.FP64: ("d", 8),
    Dtype.U8: ("B", 1),
    Dtype.I32: ("i", 4),
    Dtype.I64: ("q", 8),
}

_KEYS = {"input", "softmax", "top_k", "labels", "labels_file"}


def _f32(x):
    """`x` rounded to single precision, as the Rust plugin's f32 scores are."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def parse_labels(text):
    """One label per line, trimmed; trailing empty lines ignored."""
    labels = [line.strip() for line in text.splitlines()]
    while labels and labels[-1] == "":
        labels.pop()
    return labels


class Classify:
    def __init__(self, config):
        unknown = sorted(set(config) - _KEYS)
        if unknown:
            raise ValueError(f"unknown field `{unknown[0]}`, expected one of {sorted(_KEYS)}")
        self.input = config.get("input", "probabilities")
        self.softmax = bool(config.get("softmax", False))
        top_k = config.get("top_k", 5)
        if not self.input:
            raise ValueError("`input` must not be empty")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError("`top_k` must be at least 1")
        self.top_k = top_k
        labels, labels_file = config.get("labels"), config.get("labels_file")
        if labels is not None and labels_file is not None:
            raise ValueError("set `labels` or `labels_file`, not both")
        if labels is not None:
            if not labels:
                raise ValueError("`labels` is empty")
        elif labels_file is not None:
            # Inside the sandbox: the host must grant the folder.
            try:
                with open(labels_file, encoding="utf-8") as f:
                    labels = parse_labels(f.read())
            except OSError as e:
                raise ValueError(f"cannot read labels_file `{labels_file}`: {e}") from e
            if not labels:
                raise ValueError(f"labels_file `{labels_file}` holds no labels")
        self.labels = labels

    def scores(self, tensors):
        """The score vector of the `input` tensor, or raise ValueError."""
        tensor = next((t for t in tensors if t.name == self.input), None)
        if tensor is None:
            have = [t.name for t in tensors]
            raise ValueError(f"no output tensor named `{self.input}` (have: {have})")
        shape = tensor.shape
        if not shape or any(d != 1 for d in shape[:-1]):
            raise ValueError(f"tensor `{self.input}` has shape {shape}, expected [K] or [1, K]")
        if tensor.dtype not in _FORMATS:
            raise ValueError(f"tensor `{self.input}` has dtype {tensor.dtype.name}, not supported here")
        fmt, size = _FORMATS[tensor.dtype]
        count = math.prod(shape)
        if len(tensor.data) != count * size:
            raise ValueError(f"tensor `{self.input}`: {len(tensor.data)} bytes do not fill shape {shape}")
        # As f32, like the Rust plugin's `to_f32`.
        return [_f32(v) for v in struct.unpack(f"<{count}{fmt}", tensor.data)]

    def rank(self, scores):
        """The top-k (index, score), best first, ties by the lower index."""
        if not scores:
            raise ValueError("the score tensor is empty")
        for i, s in enumerate(scores):
            if math.isnan(s):
                raise ValueError(f"score {i} is NaN")
        if self.softmax:
            for i, s in enumerate(scores):
                if s == math.inf:
                    raise ValueError(f"score {i} is +inf; softmax is undefined")
            top = max(scores)
            if top == -math.inf:
                raise ValueError("every score is -inf; softmax is undefined")
            exps = [math.exp(s - top) for s in scores]
            total = sum(exps)
            values = [_f32(e / total) for e in exps]
        else:
            for i, s in enumerate(scores):
                if math.isinf(s):
                    raise ValueError(f"score {i} is infinite, which JSON cannot carry (softmax = false)")
            values = scores
        # sorted() is stable: equal scores keep index order.
        order = sorted(range(len(values)), key=lambda i: -values[i])
        return [(i, values[i]) for i in order[: min(self.top_k, len(values))]]

    def classify(self, tensors):
        scores = self.scores(tensors)
        if self.labels is not None and len(self.labels) != len(scores):
            raise ValueError(
                f"{len(self.labels)} labels are configured but tensor `{self.input}` has {len(scores)} classes"
            )
        try:
            ranked = self.rank(scores)
        except ValueError as e:
            raise ValueError(f"tensor `{self.input}`: {e}") from e
        label = (lambda i: self.labels[i]) if self.labels is not None else str
        top = [{"label": label(i), "index": i, "score": s} for i, s in ranked]
        return {**top[0], "top": top}


class Postprocess(exports.Postprocess):
    def init(self, config: str) -> None:
        global _plugin
        try:
            _plugin = Classify(json.loads(config))
        except (ValueError, TypeError) as e:
            # The host reports this string and refuses the plugin at start.
            raise Err(str(e))

    def postprocess(self, items):
        results = []
        for item in items:
            # One item's failure is its own: never raise out of the batch.
            try:
                body = json.dumps(_plugin.classify(item.tensors)).encode()
                results.append(Ok(Document(content_type="application/json", body=body)))
            except ValueError as e:
                results.append(Err(ItemError_InvalidInput(str(e))))
        return results
