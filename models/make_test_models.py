"""Tiny ONNX models for Sluice's error-path tests (not trained; a few hundred bytes).

- test/unsupported_scaler.onnx: one `ai.onnx.ml` Scaler node, an operator
  tract does not implement; Sluice must refuse the model naming the operator.
"""
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "test")
out.mkdir(parents=True, exist_ok=True)

node = helper.make_node("Scaler", ["input"], ["scaled"], domain="ai.onnx.ml", offset=[0.5, 0.5], scale=[2.0, 2.0])
graph = helper.make_graph(
    [node],
    "unsupported_scaler",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
    [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 2])],
)
model = helper.make_model(
    graph,
    opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)],
    producer_name="sluice-make-test-models",
)
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, out / "unsupported_scaler.onnx")
print("wrote", out / "unsupported_scaler.onnx")
