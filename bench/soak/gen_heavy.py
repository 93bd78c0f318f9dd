"""Writes the soak harness's compute-bound model: the mlp's interface (x FP32 [N,256] -> y FP32
[N,1]) with a hidden width of HIDDEN (default 2048), so compute, not protocol work, bounds
capacity, as in the overload report (0.6 ms unloaded). Usage: gen_heavy.py OUT.onnx [HIDDEN]."""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
hidden = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
rng = np.random.default_rng(7)


def w(shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


inits = {"W1": w((256, hidden)), "b1": np.zeros(hidden, np.float32),
         "W2": w((hidden, hidden)), "b2": np.zeros(hidden, np.float32),
         "W3": w((hidden, 1)), "b3": np.zeros(1, np.float32)}
nodes = [
    helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
    helper.make_node("Gemm", ["r1", "W2", "b2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
    helper.make_node("Gemm", ["r2", "W3", "b3"], ["h3"]), helper.make_node("Sigmoid", ["h3"], ["y"]),
]
graph = helper.make_graph(
    nodes, "heavy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    [numpy_helper.from_array(a, n) for n, a in inits.items()])
m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, out)
