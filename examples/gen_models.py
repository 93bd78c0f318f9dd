#!/usr/bin/env python3
"""Writes the example model repository used by the README, the tests and the benches.

  gen_models.py [--out DIR]        (default: examples/models next to this script)

Models (ONNX opset 13, IR version 8, symbolic batch dimension "batch"):

  mlp     x FP32 [N,256] -> Gemm 512, ReLU -> Gemm 256, ReLU -> Gemm 1 -> Sigmoid -> y FP32 [N,1].
          Weights are drawn exactly as the peers' make_mlp.py draws them (seed 42, normal scaled by
          1/sqrt(fan_in), zero biases), so the numbers equal the peer benchmarks' model.
  ranker  ids INT64 [N,8], dense FP32 [N,13] -> score FP32 [N,1]. Each id is reduced into [0, 1000)
          (Mod, Add 1000, Mod: correct under both floor and truncating integer remainder, so any
          int64, negative ones included, indexes the table), looked up in an embedding table
          E [1000,16] (Gather) and sum-pooled over the 8 ids (ReduceSum axis 1) -> [N,16]; dense ->
          Gemm 32, ReLU -> [N,32]; Concat -> [N,48] -> Gemm 32, ReLU -> Gemm 1 -> Sigmoid. Seed 43,
          small non-zero biases.

Each model directory gets `config.toml`, `1/model.onnx` and `expected.json`: a seeded batch of 4
rows and the outputs onnxruntime computes for it, as
  {"inputs": [{"name", "datatype", "shape", "data": [flat]}], "outputs": [...same...]}
with every float written in full (Python repr of the float32 value). The output is deterministic:
two runs on one machine write byte-identical files.
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
F, I64 = TensorProto.FLOAT, TensorProto.INT64
VOCAB = 1000
GOLDEN_ROWS = 4
KSERVE_NAME = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def scaled_normal(rng, shape, fan_in):
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def finish(name, nodes, inputs, outputs, inits):
    graph = helper.make_graph(
        nodes, name, inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()]
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def build_mlp():
    # same draw order as make_mlp.py: W1, W2, W3 from one generator seeded 42
    rng = np.random.default_rng(42)
    inits = {"W1": scaled_normal(rng, (256, 512), 256), "b1": np.zeros(512, np.float32)}
    inits.update({"W2": scaled_normal(rng, (512, 256), 512), "b2": np.zeros(256, np.float32),
                  "W3": scaled_normal(rng, (256, 1), 256), "b3": np.zeros(1, np.float32)})
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "W2", "b2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "W3", "b3"], ["h3"]), helper.make_node("Sigmoid", ["h3"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", F, ["batch", 256])]
    outputs = [helper.make_tensor_value_info("y", F, ["batch", 1])]
    return finish("mlp", nodes, inputs, outputs, inits)


def build_ranker():
    rng = np.random.default_rng(43)
    inits = {
        "vocab": np.array(VOCAB, np.int64),
        "E": scaled_normal(rng, (VOCAB, 16), 8),  # 8 ids summed: pooled entries have unit variance
        "axis1": np.array([1], np.int64),
        "Wd": scaled_normal(rng, (13, 32), 13), "bd": scaled_normal(rng, (32,), 100),
        "W1": scaled_normal(rng, (48, 32), 48), "b1": scaled_normal(rng, (32,), 100),
        "W2": scaled_normal(rng, (32, 1), 32), "b2": scaled_normal(rng, (1,), 100),
    }
    nodes = [
        helper.make_node("Mod", ["ids", "vocab"], ["ids_m1"], fmod=0),
        helper.make_node("Add", ["ids_m1", "vocab"], ["ids_m2"]),  # (-1000, 2000): no overflow
        helper.make_node("Mod", ["ids_m2", "vocab"], ["idx"], fmod=0),  # [0, 1000)
        helper.make_node("Gather", ["E", "idx"], ["emb"], axis=0),  # [N, 8, 16]
        helper.make_node("ReduceSum", ["emb", "axis1"], ["pooled"], keepdims=0),  # [N, 16]
        helper.make_node("Gemm", ["dense", "Wd", "bd"], ["hd"]), helper.make_node("Relu", ["hd"], ["rd"]),
        helper.make_node("Concat", ["pooled", "rd"], ["joined"], axis=1),  # [N, 48]
        helper.make_node("Gemm", ["joined", "W1", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "W2", "b2"], ["h2"]), helper.make_node("Sigmoid", ["h2"], ["score"]),
    ]
    inputs = [helper.make_tensor_value_info("ids", I64, ["batch", 8]),
              helper.make_tensor_value_info("dense", F, ["batch", 13])]
    outputs = [helper.make_tensor_value_info("score", F, ["batch", 1])]
    return finish("ranker", nodes, inputs, outputs, inits)


def golden_mlp():
    rng = np.random.default_rng(1042)
    return {"x": rng.standard_normal((GOLDEN_ROWS, 256)).astype(np.float32)}


def golden_ranker():
    rng = np.random.default_rng(1043)
    ids = rng.integers(0, VOCAB, (GOLDEN_ROWS, 8), dtype=np.int64)
    i64 = np.iinfo(np.int64)
    # ids outside [0, 1000) must index the table too
    ids[2] = [-1, -999, -1000, -1001, 1000, 1999, 123456789012, -987654321098]
    ids[3] = [i64.max, i64.min, i64.min + 1, 2**40, -(2**40), 999, 0, 7]
    dense = rng.standard_normal((GOLDEN_ROWS, 13)).astype(np.float32)
    return {"ids": ids, "dense": dense}


MLP_CONFIG = """\
# The MLP of the peer benchmarks: x FP32 [N,256] -> 512 -> 256 -> 1 -> sigmoid -> y FP32 [N,1].
# Written by examples/gen_models.py.
# No backend is named: the server's default for .onnx files serves it (onnxruntime when its
# library is found, else tract; see kiln serve --default-onnx-backend).
max_batch_size = 64

[[input]]
name = "x"
data_type = "FP32"
dims = [256]

[[output]]
name = "y"
data_type = "FP32"
dims = [1]

[dynamic_batching]
max_queue_delay_us = 100
preferred_batch_sizes = [64]
max_queue_size = 1024

[instance_group]
count = 1
threads = 1
"""

RANKER_CONFIG = """\
# A small ranking model: ids INT64 [N,8] (embedding lookup, sum pooling) and dense FP32 [N,13]
# -> score FP32 [N,1]. Inputs and outputs are read from the ONNX file.
# Written by examples/gen_models.py.
# No backend is named: the server's default for .onnx files serves it (onnxruntime when its
# library is found, else tract; see kiln serve --default-onnx-backend).
max_batch_size = 64

[dynamic_batching]
max_queue_delay_us = 100
preferred_batch_sizes = [64]
max_queue_size = 1024

[instance_group]
count = 1
threads = 1
"""


def tensor_json(name, a):
    a = np.ascontiguousarray(a)
    if a.dtype == np.float32:
        data = [float(v) for v in a.ravel()]  # exact float32 value, repr round-trips
    else:
        data = [int(v) for v in a.ravel()]
    return {"name": name, "datatype": KSERVE_NAME[a.dtype], "shape": list(a.shape), "data": data}


def golden_json(model_bytes, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    doc = {"inputs": [tensor_json(n, a) for n, a in feeds.items()],
           "outputs": [tensor_json(n, a) for n, a in zip(names, outs)]}
    # one tensor per line: readable diffs without one number per line
    lines = ["{"]
    for i, key in enumerate(("inputs", "outputs")):
        lines.append(f' "{key}": [')
        ts = doc[key]
        for j, t in enumerate(ts):
            lines.append("  " + json.dumps(t) + ("," if j + 1 < len(ts) else ""))
        lines.append(" ]" + ("," if i == 0 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "models"), help="repository directory (default: %(default)s)")
    args = ap.parse_args()

    for name, build, config, golden in (
        ("mlp", build_mlp, MLP_CONFIG, golden_mlp),
        ("ranker", build_ranker, RANKER_CONFIG, golden_ranker),
    ):
        model = build()
        blob = model.SerializeToString()
        d = os.path.join(args.out, name)
        write(os.path.join(d, "config.toml"), config)
        write(os.path.join(d, "1", "model.onnx"), blob)
        write(os.path.join(d, "expected.json"), golden_json(blob, golden()))
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        print(f"wrote {d}: inputs {[i.name for i in model.graph.input]}, "
              f"outputs {[o.name for o in model.graph.output]}, params {params}, {len(blob)} bytes")


if __name__ == "__main__":
    main()
