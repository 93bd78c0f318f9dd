#!/usr/bin/env python3
"""Writes a small model repository in Triton's layout, with `config.pbtxt` files only.

  gen_triton_models.py [--out DIR]        (default: examples/triton_models next to this script)

Models (ONNX opset 13, IR version 8, symbolic batch dimension "batch"):

  linear        INPUT0 FP32 [N,4] -> MatMul W [4,3] + b -> OUTPUT0 FP32 [N,3] (seed 7).
                platform "onnxruntime_onnx"; dynamic batching with preferred sizes and a default
                queue policy, two CPU instances, a zero-data warm-up sample.
  scale         INPUT0 FP32 [N,3] -> INPUT0 * 2 + 0.5 -> OUTPUT0 FP32 [N,3].
                backend "onnxruntime", its file named by default_model_filename (scale.onnx),
                a backend parameter written as Triton writes them (a string).
  linear_scale  an ensemble: x -> linear -> h -> scale -> y (max_batch_size 8, so its tensors
                lead with the batch dimension, as Triton's ensembles do).

`expected.json` holds a seeded batch of 4 rows and the outputs onnxruntime computes for it, per
model, as {"<model>": {"inputs": [{"name", "datatype", "shape", "data"}], "outputs": [...]}},
floats written in full (Python repr of the float32 value). The output is deterministic: two runs
on one machine write byte-identical files.
"""
import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
PRODUCER = "kiln-examples"
F = TensorProto.FLOAT
ROWS = 4

LINEAR_PBTXT = """\
# A linear layer, served by ONNX Runtime. Written by examples/gen_triton_models.py.
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { latest: { num_versions: 1 } }
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy {
    default_timeout_microseconds: 5000000
    max_queue_size: 64
  }
}
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    inputs {
      key: "INPUT0"
      value: {
        data_type: TYPE_FP32
        dims: [ 4 ]
        zero_data: true
      }
    }
  }
]
"""

SCALE_PBTXT = """\
# OUTPUT0 = INPUT0 * 2 + 0.5. Written by examples/gen_triton_models.py.
name: "scale"
backend: "onnxruntime"
default_model_filename: "scale.onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
parameters {
  key: "intra_op_threads"
  value: { string_value: "1" }
}
"""

ENSEMBLE_PBTXT = """\
# linear then scale, as one model. Written by examples/gen_triton_models.py.
name: "linear_scale"
platform: "ensemble"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
ensemble_scheduling {
  step [
    {
      model_name: "linear"
      model_version: -1
      input_map { key: "INPUT0" value: "x" }
      output_map { key: "OUTPUT0" value: "h" }
    },
    {
      model_name: "scale"
      model_version: 1
      input_map { key: "INPUT0" value: "h" }
      output_map { key: "OUTPUT0" value: "y" }
    }
  ]
}
"""


def finish(name, nodes, inputs, outputs, inits):
    graph = helper.make_graph(
        nodes, name, inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()]
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def tensor(name, width):
    return helper.make_tensor_value_info(name, F, ["batch", width])


def build_linear():
    rng = np.random.default_rng(7)
    inits = {
        "W": (rng.standard_normal((4, 3)) / 2).astype(np.float32),
        "b": (rng.standard_normal(3) / 10).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["OUTPUT0"]),
    ]
    return finish("linear", nodes, [tensor("INPUT0", 4)], [tensor("OUTPUT0", 3)], inits)


def build_scale():
    inits = {"two": np.array(2.0, np.float32), "half": np.array(0.5, np.float32)}
    nodes = [
        helper.make_node("Mul", ["INPUT0", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "half"], ["OUTPUT0"]),
    ]
    return finish("scale", nodes, [tensor("INPUT0", 3)], [tensor("OUTPUT0", 3)], inits)


def floats(a):
    return [float(v) for v in np.asarray(a, np.float32).reshape(-1)]


def case(inputs, outputs):
    def entry(name, a):
        return {"name": name, "datatype": "FP32", "shape": list(a.shape), "data": floats(a)}

    return {
        "inputs": [entry(n, a) for n, a in inputs.items()],
        "outputs": [entry(n, a) for n, a in outputs.items()],
    }


def run(model, feed):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "triton_models"))
    out = ap.parse_args().out

    linear, scale = build_linear(), build_scale()
    os.makedirs(os.path.join(out, "linear", "1"), exist_ok=True)
    onnx.save(linear, os.path.join(out, "linear", "1", "model.onnx"))
    os.makedirs(os.path.join(out, "scale", "1"), exist_ok=True)
    onnx.save(scale, os.path.join(out, "scale", "1", "scale.onnx"))
    # Triton wants a version directory for an ensemble too; it stays empty
    os.makedirs(os.path.join(out, "linear_scale", "1"), exist_ok=True)
    write(os.path.join(out, "linear_scale", "1", ".keep"), "")
    write(os.path.join(out, "linear", "config.pbtxt"), LINEAR_PBTXT)
    write(os.path.join(out, "scale", "config.pbtxt"), SCALE_PBTXT)
    write(os.path.join(out, "linear_scale", "config.pbtxt"), ENSEMBLE_PBTXT)

    x = np.random.default_rng(11).standard_normal((ROWS, 4)).astype(np.float32)
    h = run(linear, {"INPUT0": x})
    y = run(scale, {"INPUT0": h})
    expected = {
        "linear": case({"INPUT0": x}, {"OUTPUT0": h}),
        "scale": case({"INPUT0": h}, {"OUTPUT0": y}),
        "linear_scale": case({"x": x}, {"y": y}),
    }
    write(os.path.join(out, "expected.json"), json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
