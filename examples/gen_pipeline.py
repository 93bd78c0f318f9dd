#!/usr/bin/env python3
"""Writes the recall -> coarse -> fine recommendation example: three served models and the
`recommend` pipeline chaining them, then its golden outputs (examples/pipeline_reference.py).

  gen_pipeline.py [--out DIR] [--seed 13]     (default: examples/models next to this script)

Models (ONNX opset 13, IR version 8, symbolic batch dimension "batch"; weights scaled normal,
numpy.random.default_rng(seed * 1000 + k) with a fixed k per model):

  user_tower   user_features FP32 [N,32] -> Gemm 64, ReLU -> Gemm 16 -> user_emb FP32 [N,16]
               (the user side of a two-tower retrieval model; k = 1)
  coarse_rank  features FP32 [N,32] -> Gemm 32, ReLU -> Gemm 1 -> Sigmoid -> score FP32 [N,1]
               (features = [user_emb, item embedding]; k = 2)
  fine_rank    recsys DLRM written by examples/gen_dlrm.py: sparse_0 = item id, sparse_1 = user
               id (INT64 [N,1] each, one 16-wide table of 10000 rows each, sum pooling), dense
               FP32 [N,13], bottom MLP 13-32-16, concat, top MLP 48-32-1, sigmoid -> prob [N,1].
               Both features have buckets = 10000 (hash = "none"): key = id % 10000, so item ids
               up to 100000 and any user id land in the tables. gen_dlrm's golden file is not
               kept: it predates the bucketing.
  recommend    backend = "pipeline" (config.toml only; its steps are listed there) and
               1/items.safetensors: keys I64 [100000] = 0..99999, embeddings F16 [100000,16]
               normal with standard deviation 1/2 (k = 3), the item side of the two-tower model.

The pipeline takes user_features FP32 [1,32], user_dense FP32 [1,13] and user_id INT64 [1,1],
retrieves the 1000 items with the largest dot product with user_emb, scores them with
coarse_rank, keeps the best 100, scores those with fine_rank and returns the best 10:
item_ids INT64 [10] and scores FP32 [10] (their fine_rank probabilities), best first.

Finally examples/pipeline_reference.py (an independent NumPy implementation reading the written
files) writes recommend/golden.json. The output is deterministic: the same arguments write the
same files.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13
IR_VERSION = 8
PRODUCER = "kiln-examples"
F = TensorProto.FLOAT
USER_FEATURES, USER_DENSE, EMB_DIM = 32, 13, 16
ITEMS, RECALL_K, COARSE_K, FINAL_K = 100000, 1000, 100, 10
FINE_ROWS = 10000  # rows per fine_rank table, and the buckets of its features
K_USER, K_COARSE, K_ITEMS = 1, 2, 3

# ---------------------------------------------------------------------------------------------
# ONNX models


def scaled_normal(rng, shape, fan_in):
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def mlp_model(name, inp, out, widths, sigmoid, rng):
    """Gemm + ReLU layers of `widths` ([in, h1, ..., out]); no ReLU after the last, then an
    optional Sigmoid. Weights [in, out] (Gemm without transB), small non-zero biases."""
    nodes, inits, x = [], {}, inp
    n = len(widths) - 1
    for j in range(n):
        fan_in, fan_out = widths[j], widths[j + 1]
        inits[f"W{j}"] = scaled_normal(rng, (fan_in, fan_out), fan_in)
        inits[f"b{j}"] = scaled_normal(rng, (fan_out,), 100)
        last = j == n - 1
        y = out if last and not sigmoid else f"h{j}"
        nodes.append(helper.make_node("Gemm", [x, f"W{j}", f"b{j}"], [y]))
        if not last:
            nodes.append(helper.make_node("Relu", [y], [f"r{j}"]))
            x = f"r{j}"
        elif sigmoid:
            nodes.append(helper.make_node("Sigmoid", [y], [out]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(inp, F, ["batch", widths[0]])],
        [helper.make_tensor_value_info(out, F, ["batch", widths[-1]])],
        [numpy_helper.from_array(a, k) for k, a in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


USER_TOWER_CONFIG = """\
# User side of the recommend pipeline's two-tower retrieval model:
# user_features FP32 [N,32] -> 64 -> user_emb FP32 [N,16]. Written by examples/gen_pipeline.py.
# No backend is named: the server's default for .onnx files serves it.
max_batch_size = 64

[[input]]
name = "user_features"
data_type = "FP32"
dims = [32]

[[output]]
name = "user_emb"
data_type = "FP32"
dims = [16]

[dynamic_batching]
max_queue_delay_us = 200
max_queue_size = 1024

[instance_group]
count = 1
threads = 1
"""

COARSE_RANK_CONFIG = """\
# Coarse ranker of the recommend pipeline: features FP32 [N,32] ([user_emb, item embedding])
# -> 32 -> score FP32 [N,1] (sigmoid). Written by examples/gen_pipeline.py.
# No backend is named: the server's default for .onnx files serves it.
max_batch_size = 1024

[[input]]
name = "features"
data_type = "FP32"
dims = [32]

[[output]]
name = "score"
data_type = "FP32"
dims = [1]

[instance_group]
count = 1
threads = 1
"""

# ---------------------------------------------------------------------------------------------
# fine_rank (gen_dlrm.py)

FINE_ARGS = ["--name", "fine_rank", "--tables", "2", "--dim", "16", "--ids-per-feature", "1",
             "--dense", "13", "--bottom", "32,16", "--top", "32,1", "--rows-per-table", str(FINE_ROWS),
             "--golden-rows", "16", "--max-batch-size", "1024", "--threads", "1"]


def fine_rank_config(seed):
    lines = [
        f"# Fine ranker of the recommend pipeline: a DLRM whose weights examples/gen_dlrm.py wrote (seed {seed},",
        f"# {FINE_ROWS} rows per table); this config written by examples/gen_pipeline.py. sparse_0 is the item",
        f"# id, sparse_1 the user id; key = id % {FINE_ROWS}, so any non-negative id has a row.",
        'backend = "recsys"',
        'default_model_filename = "model.safetensors"',
        "max_batch_size = 1024",
        "",
        "[dynamic_batching]",
        "max_queue_delay_us = 200",
        "",
        "[instance_group]",
        "count = 1",
        "threads = 1",
        "",
        "[parameters]",
        'interaction = "concat"',
        'output = "prob"',
        'output_activation = "sigmoid"',
        'dense_input = "dense"',
    ]
    for i in range(2):
        lines += ["", "[[parameters.sparse]]", f'name = "sparse_{i}"', f'table = "emb.{i}"', "max_ids = 1",
                  'pooling = "sum"', 'hash = "none"', f"buckets = {FINE_ROWS}"]
    return "\n".join(lines) + "\n"


def write_fine_rank(out, seed):
    """Runs gen_dlrm.py into a scratch directory and keeps its weights file."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(HERE, "gen_dlrm.py"), "--out", tmp, "--seed", str(seed)] + FINE_ARGS
        subprocess.run(cmd, check=True)
        d = os.path.join(out, "fine_rank")
        os.makedirs(os.path.join(d, "1"), exist_ok=True)
        shutil.copyfile(os.path.join(tmp, "fine_rank", "1", "model.safetensors"),
                        os.path.join(d, "1", "model.safetensors"))
    write(os.path.join(d, "config.toml"), fine_rank_config(seed))


# ---------------------------------------------------------------------------------------------
# recommend: the item table and the pipeline config

def write_items(path, keys, emb):
    """safetensors: u64 LE header length, JSON header, raw little-endian data (keys, embeddings)."""
    k = np.ascontiguousarray(keys, "<i8").tobytes()
    e = np.ascontiguousarray(emb, "<f2").tobytes()
    header = {
        "__metadata__": {"format": "kiln-items-v1", "written_by": "examples/gen_pipeline.py"},
        "keys": {"dtype": "I64", "shape": list(keys.shape), "data_offsets": [0, len(k)]},
        "embeddings": {"dtype": "F16", "shape": list(emb.shape), "data_offsets": [len(k), len(k) + len(e)]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned
    write(path, len(raw).to_bytes(8, "little") + raw + k + e)


def step(name, kind, params, inputs, outputs):
    lines = ["", "[[step]]", f'name = "{name}"', f'{kind[0]} = "{kind[1]}"']
    lines += [f"{k} = {v}" for k, v in params]
    lines.append("input_map = { " + ", ".join(f'{k} = "{v}"' for k, v in inputs) + " }")
    lines.append("output_map = { " + ", ".join(f'{k} = "{v}"' for k, v in outputs) + " }")
    return lines


def op(name):
    return ("op", name)


def model(name):
    return ("model", name)


def recommend_config():
    lines = [
        "# Recall -> coarse -> fine recommendation for one user. Written by examples/gen_pipeline.py;",
        "# examples/pipeline_reference.py computes golden.json from the same files.",
        'backend = "pipeline"',
        "max_batch_size = 0",
    ]
    for name, dt, dims in (("user_features", "FP32", [1, USER_FEATURES]), ("user_dense", "FP32", [1, USER_DENSE]),
                           ("user_id", "INT64", [1, 1])):
        lines += ["", "[[input]]", f'name = "{name}"', f'data_type = "{dt}"', f"dims = {dims}"]
    for name, dt in (("item_ids", "INT64"), ("scores", "FP32")):
        lines += ["", "[[output]]", f'name = "{name}"', f'data_type = "{dt}"', f"dims = [{FINAL_K}]"]
    steps = [
        ("user_tower", model("user_tower"), [], [("user_features", "user_features")], [("user_emb", "user_emb")]),
        ("recall", op("retrieve"), [("table", '"items"'), ("k", RECALL_K)], [("query", "user_emb")],
         [("ids", "recall_ids"), ("embeddings", "recall_emb")]),
        ("cand_emb", op("reshape"), [("shape", [RECALL_K, EMB_DIM])], [("input", "recall_emb")], [("output", "cand_emb")]),
        ("cand_ids", op("reshape"), [("shape", [RECALL_K])], [("input", "recall_ids")], [("output", "cand_ids")]),
        ("user_rows", op("repeat"), [], [("input", "user_emb"), ("like", "cand_emb")], [("output", "user_emb_rows")]),
        ("coarse_features", op("concat"), [("axis", 1)], [("input_0", "user_emb_rows"), ("input_1", "cand_emb")],
         [("output", "coarse_features")]),
        ("coarse_rank", model("coarse_rank"), [], [("features", "coarse_features")], [("score", "coarse_score")]),
        ("coarse_scores", op("reshape"), [("shape", [RECALL_K])], [("input", "coarse_score")],
         [("output", "coarse_scores")]),
        ("coarse_top", op("topk"), [("k", COARSE_K)], [("input", "coarse_scores")], [("indices", "coarse_pos")]),
        ("shortlist", op("gather"), [("axis", 0)], [("data", "cand_ids"), ("indices", "coarse_pos")],
         [("output", "short_ids")]),
        ("fine_items", op("reshape"), [("shape", [COARSE_K, 1])], [("input", "short_ids")], [("output", "fine_items")]),
        ("fine_dense", op("repeat"), [], [("input", "user_dense"), ("like", "fine_items")], [("output", "fine_dense")]),
        ("fine_users", op("repeat"), [], [("input", "user_id"), ("like", "fine_items")], [("output", "fine_users")]),
        ("fine_rank", model("fine_rank"), [],
         [("sparse_0", "fine_items"), ("sparse_1", "fine_users"), ("dense", "fine_dense")], [("prob", "fine_prob")]),
        ("fine_scores", op("reshape"), [("shape", [COARSE_K])], [("input", "fine_prob")], [("output", "fine_scores")]),
        ("final_top", op("topk"), [("k", FINAL_K)], [("input", "fine_scores")],
         [("indices", "final_pos"), ("values", "scores")]),
        ("final_ids", op("gather"), [("axis", 0)], [("data", "short_ids"), ("indices", "final_pos")],
         [("output", "item_ids")]),
    ]
    for s in steps:
        lines += step(*s)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "models"), help="repository directory (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args()
    if a.seed < 0:
        ap.error("--seed must be >= 0")

    for name, k, widths, sigmoid, (inp, out), config in (
        ("user_tower", K_USER, [USER_FEATURES, 64, EMB_DIM], False, ("user_features", "user_emb"), USER_TOWER_CONFIG),
        ("coarse_rank", K_COARSE, [2 * EMB_DIM, 32, 1], True, ("features", "score"), COARSE_RANK_CONFIG),
    ):
        m = mlp_model(name, inp, out, widths, sigmoid, np.random.default_rng(a.seed * 1000 + k))
        d = os.path.join(a.out, name)
        write(os.path.join(d, "config.toml"), config)
        write(os.path.join(d, "1", "model.onnx"), m.SerializeToString())

    write_fine_rank(a.out, a.seed)

    rng = np.random.default_rng(a.seed * 1000 + K_ITEMS)
    emb = (rng.standard_normal((ITEMS, EMB_DIM)) * 0.5).astype(np.float16)
    d = os.path.join(a.out, "recommend")
    write_items(os.path.join(d, "1", "items.safetensors"), np.arange(ITEMS, dtype=np.int64), emb)
    write(os.path.join(d, "config.toml"), recommend_config())

    subprocess.run([sys.executable, os.path.join(HERE, "pipeline_reference.py"), "--models", a.out,
                    "--seed", str(a.seed)], check=True)
    for name in ("user_tower", "coarse_rank", "fine_rank", "recommend"):
        root = os.path.join(a.out, name)
        files = sorted(os.path.relpath(os.path.join(p, f), a.out) for p, _, fs in os.walk(root) for f in fs)
        print("wrote " + ", ".join(f"{f} ({os.path.getsize(os.path.join(a.out, f))} B)" for f in files))


if __name__ == "__main__":
    main()
