#!/usr/bin/env python3
"""Writes ONNX stand-ins for the Triton QA models that Triton's Python client examples call
(tests/triton_examples/*.py, vendored unchanged from triton-inference-server/client r24.10).

  .venv/bin/python tests/triton_examples/gen_models.py --out DIR [--models a,b] [--image FILE]

Eight models, each DIR/<name>/config.toml and DIR/<name>/1/model.onnx, batching up to 8 rows
unless noted (ONNX opset 13, IR version 8, symbolic batch dimension "batch"); `--models` writes
only those named:

  simple                 INPUT0, INPUT1 INT32 [16] -> OUTPUT0 = INPUT0 + INPUT1,
                         OUTPUT1 = INPUT0 - INPUT1 (Triton's `simple`)
  simple_int8            the same in INT8 (computed in INT32, cast back)
  simple_string          the same on BYTES holding decimal integers (Cast to INT32 and back)
  simple_identity        INPUT0 BYTES [16] -> OUTPUT0, unchanged
  custom_identity_int32  INPUT0 INT32 [16] -> OUTPUT0, unchanged
  identity_fp32          INPUT0 FP32 [16] -> OUTPUT0, unchanged
  inception_graphdef     input FP32 [299,299,3] (NHWC) -> InceptionV3/Predictions/Softmax FP32
                         [1001] (softmax of a fixed projection of the mean colour: the names,
                         shapes, input format and labels file of Triton's Inception model, not
                         its weights)
  densenet_onnx          data_0 FP32 [3,224,224] (NCHW) -> fc6_1 FP32 [1000], not batching, as
                         Triton's densenet_onnx (likewise)

The image stand-ins have a labels file for their output (`[labels]`, Triton's `label_filename`),
which the image clients' classification requests (`class_count`) print. `--image FILE` also
writes a small RGB PNG for those clients. The examples check only the arithmetic of the first
five; the image stand-ins answer deterministic scores. Two runs write identical files.
"""
import argparse
import os
import struct
import zlib

import numpy as np
import onnx
from onnx import TensorProto as TP, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
BATCH = 8


def vi(name, ty, dims, batch=True):
    return helper.make_tensor_value_info(name, ty, (["batch"] if batch else []) + list(dims))


def save(out, name, nodes, inputs, outputs, config, inits=None, files=None):
    inits = [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()]
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln-triton-examples")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    d = os.path.join(out, name)
    os.makedirs(os.path.join(d, "1"), exist_ok=True)
    with open(os.path.join(d, "1", "model.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    with open(os.path.join(d, "config.toml"), "w") as f:
        f.write(config)
    for fname, text in (files or {}).items():
        with open(os.path.join(d, fname), "w") as f:
            f.write(text)


def tensors(kind, items):
    return "".join(
        f'\n[[{kind}]]\nname = "{n}"\ndata_type = "{t}"\ndims = {list(dims)}\n' for n, t, dims in items
    )


def config(comment, inputs, outputs, batch=BATCH, extra=""):
    return (
        f"# {comment}\n# Written by tests/triton_examples/gen_models.py.\nmax_batch_size = {batch}\n"
        + extra
        + tensors("input", inputs)
        + tensors("output", outputs)
    )


def add_sub(out, name, proto, onnx_ty, pre, post):
    """INPUT0 + INPUT1 and INPUT0 - INPUT1, computing in INT32 between `pre` and `post` casts."""
    nodes, a, b = [], "INPUT0", "INPUT1"
    if pre:
        nodes += [helper.make_node("Cast", ["INPUT0"], ["a"], to=TP.INT32), helper.make_node("Cast", ["INPUT1"], ["b"], to=TP.INT32)]
        a, b = "a", "b"
    s, d = ("sum", "diff") if post else ("OUTPUT0", "OUTPUT1")
    nodes += [helper.make_node("Add", [a, b], [s]), helper.make_node("Sub", [a, b], [d])]
    if post:
        nodes += [helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=onnx_ty), helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=onnx_ty)]
    io = [("INPUT0", proto, [16]), ("INPUT1", proto, [16])]
    outs = [("OUTPUT0", proto, [16]), ("OUTPUT1", proto, [16])]
    save(
        out,
        name,
        nodes,
        [vi(n, onnx_ty, d) for n, _, d in io],
        [vi(n, onnx_ty, d) for n, _, d in outs],
        config(f"Triton's `{name}` QA model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.", io, outs),
    )


def identity(out, name, proto, onnx_ty):
    save(
        out,
        name,
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [vi("INPUT0", onnx_ty, [16])],
        [vi("OUTPUT0", onnx_ty, [16])],
        config(f"Triton's `{name}` QA model: OUTPUT0 = INPUT0.", [("INPUT0", proto, [16])], [("OUTPUT0", proto, [16])]),
    )


def classifier(out, name, inp, dims, fmt, output, classes, batch):
    """softmax(mean over the image's height and width @ W): deterministic scores of the right
    shape, with a labels file of `classes` lines."""
    w = (np.arange(3 * classes, dtype=np.float32).reshape(3, classes) % 7) / 7.0
    axes = [1, 2] if fmt == "NHWC" else [2, 3]
    if not batch:
        axes = [a - 1 for a in axes]
    labels = f"{name}_labels.txt"
    save(
        out,
        name,
        [
            helper.make_node("ReduceMean", [inp], ["colour"], axes=axes, keepdims=0),
            helper.make_node("MatMul", ["colour", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [output], axis=-1),
        ],
        [vi(inp, TP.FLOAT, dims, batch)],
        [vi(output, TP.FLOAT, [classes], batch)],
        config(
            f"A stand-in with the names, shapes and labels file of Triton's `{name}` (not its weights).",
            [(inp, "FP32", dims)],
            [(output, "FP32", [classes])],
            batch=BATCH if batch else 0,
            extra=f'\n[input_format]\n"{inp}" = "{fmt}"\n\n[labels]\n"{output}" = "{labels}"\n',
        ),
        {"w": w},
        {labels: "".join(f"CLASS_{i:04d}\n" for i in range(classes))},
    )


def png(path, width=32, height=24):
    """An RGB PNG of a fixed colour gradient, written without an imaging library."""
    rows = b"".join(
        b"\0" + bytes(v for x in range(width) for v in (8 * x % 256, 10 * y % 256, 128)) for y in range(height)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="model repository directory to write")
    p.add_argument("--models", help="comma-separated names of the models to write (default: all)")
    p.add_argument("--image", help="also write a small test PNG to this path")
    args = p.parse_args()
    out = args.out
    models = {
        "simple": lambda: add_sub(out, "simple", "INT32", TP.INT32, pre=False, post=False),
        "simple_int8": lambda: add_sub(out, "simple_int8", "INT8", TP.INT8, pre=True, post=True),
        "simple_string": lambda: add_sub(out, "simple_string", "BYTES", TP.STRING, pre=True, post=True),
        "simple_identity": lambda: identity(out, "simple_identity", "BYTES", TP.STRING),
        "custom_identity_int32": lambda: identity(out, "custom_identity_int32", "INT32", TP.INT32),
        "identity_fp32": lambda: identity(out, "identity_fp32", "FP32", TP.FLOAT),
        "inception_graphdef": lambda: classifier(
            out, "inception_graphdef", "input", [299, 299, 3], "NHWC", "InceptionV3/Predictions/Softmax", 1001, True
        ),
        "densenet_onnx": lambda: classifier(out, "densenet_onnx", "data_0", [3, 224, 224], "NCHW", "fc6_1", 1000, False),
    }
    names = args.models.split(",") if args.models else list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        p.error(f"unknown models {unknown}; known: {list(models)}")
    for n in names:
        models[n]()
    if args.image:
        png(args.image)


if __name__ == "__main__":
    main()
