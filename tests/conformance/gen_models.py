#!/usr/bin/env python3
"""Writes the small models of the backend conformance suite (crates/kiln-backend-conformance).

  .venv/bin/python tests/conformance/gen_models.py [--out DIR]   (default: tests/conformance/models)

Models (ONNX opset 13, IR version 8, symbolic batch dimension "batch" unless said otherwise):

  dtypes    one input and one output per fixed-size protocol type, [N,3] each: BOOL -> Not,
            FP32 -> +1.5, FP64 -> *2, INT32 / INT64 -> +7, every other type -> Identity.
            config.toml names no inputs or outputs: they are read from the file.
  strings   text BYTES [N,2] -> Identity -> text_out BYTES [N,2].
  multi_io  a FP32 [N,4], b INT64 [N,3], seq FP32 [N,L] (L variable) -> four outputs:
            sum_b INT64 [N,1], scaled FP32 [N,4] = 2a+1, seq_mean FP32 [N], mixed FP32 [N,1]
            = sum(a) + sum(b). config.toml serves only mixed, scaled and seq_mean, in that order.
  fixed     no batching (max_batch_size = 0): x FP32 [2,3] -> y = x @ W FP32 [2,2] and total =
            sum(x), a scalar FP32 [].
  pinned    inputs whose width the file leaves symbolic but the weights fix: x FP32 [N,"feat"]
            -> y = relu(x) @ W[4,3] FP32 [N,3]; z FP32 [N,"k"] -> w = Gemm(z, Wt[2,5], transB)
            FP32 [N,2]. Backends must serve x as [4] and z as [5] and refuse other widths.

Each model directory gets config.toml, 1/model.onnx and expected.json (inputs and the outputs
onnxruntime computes for them, the format of examples/models/*/expected.json; BOOL as true/false,
BYTES as UTF-8 strings, FP16 as the exact float value). Deterministic: two runs write identical
files.
"""
import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
ROWS = 4

# protocol name, numpy type, ONNX type
TYPES = [
    ("BOOL", np.bool_, TP.BOOL), ("UINT8", np.uint8, TP.UINT8), ("UINT16", np.uint16, TP.UINT16),
    ("UINT32", np.uint32, TP.UINT32), ("UINT64", np.uint64, TP.UINT64), ("INT8", np.int8, TP.INT8),
    ("INT16", np.int16, TP.INT16), ("INT32", np.int32, TP.INT32), ("INT64", np.int64, TP.INT64),
    ("FP16", np.float16, TP.FLOAT16), ("FP32", np.float32, TP.FLOAT), ("FP64", np.float64, TP.DOUBLE),
]
NAME_OF = {np.dtype(n): p for p, n, _ in TYPES}
NAME_OF[np.dtype(object)] = "BYTES"


def finish(name, nodes, inputs, outputs, inits=None):
    inits = [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()]
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln-conformance")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def vi(name, ty, dims):
    return helper.make_tensor_value_info(name, ty, dims)


def build_dtypes():
    nodes, inputs, outputs, inits = [], [], [], {}
    for proto, npt, ty in TYPES:
        low = proto.lower()
        i, o = f"in_{low}", f"out_{low}"
        inputs.append(vi(i, ty, ["batch", 3]))
        outputs.append(vi(o, ty, ["batch", 3]))
        if proto == "BOOL":
            nodes.append(helper.make_node("Not", [i], [o]))
        elif proto in ("FP32", "FP64", "INT32", "INT64"):
            op, c = {"FP32": ("Add", 1.5), "FP64": ("Mul", 2.0), "INT32": ("Add", 7), "INT64": ("Add", 7)}[proto]
            inits[f"c_{low}"] = np.array(c, dtype=npt)
            nodes.append(helper.make_node(op, [i, f"c_{low}"], [o]))
        else:
            nodes.append(helper.make_node("Identity", [i], [o]))
    return finish("dtypes", nodes, inputs, outputs, inits)


def golden_dtypes():
    rng = np.random.default_rng(2001)
    feeds = {}
    for proto, npt, _ in TYPES:
        if proto == "BOOL":
            a = rng.integers(0, 2, (ROWS, 3)).astype(np.bool_)
            a[0] = [True, False, True]
        elif np.issubdtype(npt, np.integer):
            info = np.iinfo(npt)
            a = rng.integers(0, 100, (ROWS, 3)).astype(npt)
            a[0] = [info.min, info.max, 0]  # extremes survive the wire format
            if proto in ("INT32", "INT64"):
                a[0] = [info.min, info.max - 7, -1]  # + 7 must not overflow
        else:
            a = (rng.standard_normal((ROWS, 3)) * 10).astype(npt)
        feeds[f"in_{proto.lower()}"] = a
    return feeds


def build_strings():
    nodes = [helper.make_node("Identity", ["text"], ["text_out"])]
    return finish("strings", nodes, [vi("text", TP.STRING, ["batch", 2])], [vi("text_out", TP.STRING, ["batch", 2])])


def golden_strings():
    words = ["", "kiln", "ünïcödé ✓", "a much longer string with spaces", "x", "0", "tab\tand\nnewline", "last"]
    return {"text": np.array(words, dtype=object).reshape(ROWS, 2)}


def build_multi_io():
    inits = {"two": np.array(2.0, np.float32), "one": np.array(1.0, np.float32), "axis1": np.array([1], np.int64)}
    nodes = [
        helper.make_node("ReduceSum", ["b", "axis1"], ["sum_b"], keepdims=1),
        helper.make_node("Mul", ["a", "two"], ["a2"]), helper.make_node("Add", ["a2", "one"], ["scaled"]),
        helper.make_node("ReduceMean", ["seq"], ["seq_mean"], axes=[1], keepdims=0),
        helper.make_node("ReduceSum", ["a", "axis1"], ["sum_a"], keepdims=1),
        helper.make_node("Cast", ["sum_b"], ["sum_b_f"], to=TP.FLOAT),
        helper.make_node("Add", ["sum_a", "sum_b_f"], ["mixed"]),
    ]
    inputs = [vi("a", TP.FLOAT, ["batch", 4]), vi("b", TP.INT64, ["batch", 3]), vi("seq", TP.FLOAT, ["batch", "len"])]
    outputs = [vi("sum_b", TP.INT64, ["batch", 1]), vi("scaled", TP.FLOAT, ["batch", 4]),
               vi("seq_mean", TP.FLOAT, ["batch"]), vi("mixed", TP.FLOAT, ["batch", 1])]
    return finish("multi_io", nodes, inputs, outputs, inits)


def golden_multi_io():
    rng = np.random.default_rng(2002)
    return {"a": rng.standard_normal((ROWS, 4)).astype(np.float32),
            "b": rng.integers(-50, 50, (ROWS, 3)).astype(np.int64),
            "seq": rng.standard_normal((ROWS, 5)).astype(np.float32)}


def build_fixed():
    rng = np.random.default_rng(2003)
    inits = {"W": rng.standard_normal((3, 2)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)]
    return finish("fixed", nodes, [vi("x", TP.FLOAT, [2, 3])], [vi("y", TP.FLOAT, [2, 2]), vi("total", TP.FLOAT, [])], inits)


def golden_fixed():
    return {"x": np.random.default_rng(2004).standard_normal((2, 3)).astype(np.float32)}


def build_pinned():
    rng = np.random.default_rng(2005)
    inits = {"W": rng.standard_normal((4, 3)).astype(np.float32),
             "Wt": rng.standard_normal((2, 5)).astype(np.float32)}
    nodes = [helper.make_node("Relu", ["x"], ["xr"]), helper.make_node("MatMul", ["xr", "W"], ["y"]),
             helper.make_node("Gemm", ["z", "Wt"], ["w"], transB=1)]
    inputs = [vi("x", TP.FLOAT, ["batch", "feat"]), vi("z", TP.FLOAT, ["batch", "k"])]
    outputs = [vi("y", TP.FLOAT, ["batch", 3]), vi("w", TP.FLOAT, ["batch", 2])]
    return finish("pinned", nodes, inputs, outputs, inits)


def golden_pinned():
    rng = np.random.default_rng(2006)
    return {"x": rng.standard_normal((ROWS, 4)).astype(np.float32),
            "z": rng.standard_normal((ROWS, 5)).astype(np.float32)}


CONFIGS = {
    "dtypes": """\
# Every fixed-size protocol type: one input and one output each; read from the file.
# Written by tests/conformance/gen_models.py.
max_batch_size = 8
""",
    "strings": """\
# BYTES in and out (ONNX string tensors). Written by tests/conformance/gen_models.py.
max_batch_size = 8
""",
    "multi_io": """\
# Three inputs (one with a variable dimension), four outputs of which three are served, in
# another order than the file's. Written by tests/conformance/gen_models.py.
max_batch_size = 8

[[output]]
name = "mixed"
data_type = "FP32"
dims = [1]

[[output]]
name = "scaled"
data_type = "FP32"
dims = [4]

[[output]]
name = "seq_mean"
data_type = "FP32"
dims = []
""",
    "fixed": """\
# No batching: full shapes, a scalar output. Written by tests/conformance/gen_models.py.
max_batch_size = 0
""",
    "pinned": """\
# Input widths symbolic in the file but fixed by the weights (x: 4, z: 5); read from the file.
# Written by tests/conformance/gen_models.py.
max_batch_size = 8
""",
}


def tensor_json(name, a):
    a = np.asarray(a)
    kind = NAME_OF[a.dtype]
    flat = a.ravel().tolist()
    if kind == "BYTES":
        flat = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    elif kind in ("FP16", "FP32", "FP64"):
        flat = [float(v) for v in flat]
    return {"name": name, "datatype": kind, "shape": list(a.shape), "data": flat}


def golden_json(blob, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    lines = ["{", ' "inputs": [']
    ins = [tensor_json(n, a) for n, a in feeds.items()]
    lines += ["  " + json.dumps(t, ensure_ascii=False) + ("," if i + 1 < len(ins) else "") for i, t in enumerate(ins)]
    lines += [" ],", ' "outputs": [']
    res = [tensor_json(n, a) for n, a in zip(names, outs)]
    lines += ["  " + json.dumps(t, ensure_ascii=False) + ("," if i + 1 < len(res) else "") for i, t in enumerate(res)]
    lines += [" ]", "}"]
    return "\n".join(lines) + "\n"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(data, bytes) else "utf-8") as f:
        f.write(data)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "models"), help="output directory (default: %(default)s)")
    args = ap.parse_args()
    for name, build, golden in (("dtypes", build_dtypes, golden_dtypes), ("strings", build_strings, golden_strings),
                                ("multi_io", build_multi_io, golden_multi_io), ("fixed", build_fixed, golden_fixed),
                                ("pinned", build_pinned, golden_pinned)):
        blob = build().SerializeToString()
        d = os.path.join(args.out, name)
        write(os.path.join(d, "config.toml"), CONFIGS[name])
        write(os.path.join(d, "1", "model.onnx"), blob)
        write(os.path.join(d, "expected.json"), golden_json(blob, golden()))
        print(f"wrote {d} ({len(blob)} bytes)")


if __name__ == "__main__":
    main()
