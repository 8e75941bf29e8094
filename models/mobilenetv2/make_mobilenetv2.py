#!/usr/bin/env python3
"""Write a MobileNetV2 (width 1.0, 224x224, 1000 classes) ONNX graph with
random, seeded weights, for benchmarks only (its outputs mean nothing).

Usage: make_mobilenetv2.py OUT.onnx [--seed N]
Needs numpy and onnx (the venv made by models/build.sh has both).

Graph: input `input` float32 [N,3,224,224] -> output `logits` float32 [N,1000].
BatchNorm is taken as folded into each Conv (Conv carries a bias); ReLU6 is
Clip(0, 6) with min/max as inputs (opset 13). Ops: Conv (group = channels for
depthwise), Clip, Add, GlobalAveragePool, Flatten, Gemm. Default domain only.
numpy's PCG64 generator is platform independent, so the file's bytes are too.
"""
import argparse
import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8

# (expansion t, out channels c, repeats n, first stride s), from the paper.
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = [
            numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
        ]
        self.n = 0

    def name(self, kind):
        self.n += 1
        return f"{kind}_{self.n}"

    def conv(self, x, cin, cout, k, stride, group=1, relu6=True):
        name = self.name("conv")
        fan_in = (cin // group) * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / fan_in))
        b = (self.rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01))
        self.inits.append(numpy_helper.from_array(w, name + "_W"))
        self.inits.append(numpy_helper.from_array(b, name + "_B"))
        pad = k // 2
        y = name + "_out"
        self.nodes.append(helper.make_node(
            "Conv", [x, name + "_W", name + "_B"], [y], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad, pad, pad, pad],
            group=group, dilations=[1, 1]))
        if relu6:
            r = name + "_relu6"
            self.nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [r], name=r))
            y = r
        return y

    def block(self, x, cin, cout, stride, t):
        hidden = cin * t
        y = x
        if t != 1:
            y = self.conv(y, cin, hidden, 1, 1)
        y = self.conv(y, hidden, hidden, 3, stride, group=hidden)
        y = self.conv(y, hidden, cout, 1, 1, relu6=False)
        if stride == 1 and cin == cout:
            s = self.name("add")
            self.nodes.append(helper.make_node("Add", [x, y], [s], name=s))
            y = s
        return y


def build(seed):
    b = Builder(seed)
    x = b.conv("input", 3, 32, 3, 2)
    cin = 32
    for t, c, n, s in SETTINGS:
        for i in range(n):
            x = b.block(x, cin, c, s if i == 0 else 1, t)
            cin = c
    x = b.conv(x, cin, 1280, 1, 1)
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="gap"))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1, name="flatten"))
    w = b.rng.standard_normal((1000, 1280), dtype=np.float32) * np.float32(np.sqrt(1.0 / 1280))
    b.inits.append(numpy_helper.from_array(w, "fc_W"))
    b.inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc_B"))
    b.nodes.append(helper.make_node("Gemm", ["features", "fc_W", "fc_B"], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(
        b.nodes, "mobilenetv2_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.producer_name = "sluice-models/make_mobilenetv2.py"
    model.doc_string = f"MobileNetV2 1.0/224, BN folded, random weights (numpy PCG64 seed {seed}); benchmark only"
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = build(args.seed)
    data = model.SerializeToString(deterministic=True)
    with open(args.out, "wb") as f:
        f.write(data)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out}: {len(data)} bytes, {params} parameters, "
          f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
