"""Writes `movielens_deep`, a DLRM-style model over the MovieLens stream's features, untrained,
for the deep trainer of the `kiln learn` quality benchmark.

    python gen_movielens_deep.py --out DIR [--name movielens_deep] [--dim 16] [--top 64,1]
        [--interaction dot|concat] [--table-dims user_id=64,item_id=8,...] [--hash-scale 0.01]
        [--wide user_id,item_id,...] [--seed 5]

Features (deep, one table each, named like the feature, sum pooling, hash = "xxh3", buckets
2^20, layout hashed): user_id BYTES [N, 1], item_id BYTES [N, 1], genres BYTES [N, 4] (multi-hot),
hour INT64 [N, 1]. Each table's width is --dim, or its feature's entry in --table-dims (concat
only: the dot interaction needs every table as wide as the bottom's output). The events carry no
dense features: the dense input `dense` is FP32 [N, 1] (the learner feeds zeros), so the bottom
MLP (1 -> dim) gives a learned constant vector.

Tables start empty (one row under key 2^20, which no hashed id reaches, as the weights file's
tables need a row); a key gets a row when the learner first sees it, initialised to the table's
default row: default_row = "hash" (deterministic, scale --hash-scale), which the dot
interaction needs (its gradients vanish at zero rows).

Wide & Deep (--wide FIELDS): each named feature, or cross (user_genre = user_id x genres,
user_hour = user_id x hour), gets a wide feature `<field>_w` over its own dim-1 table
`<field>_w` (layout hashed, default_row "zeros"), and the weights hold `wide.bias` (0): the
served logit is the top MLP's output plus the wide weights and the bias. A feature's wide input
is BYTES or INT64 as the field (xxh3, 2^20 buckets), fed from the event field `<field>`
(`[features] <field> = "<field>_w"` in learn.toml); a cross is a crossed feature of the spec
(`cross = ["user_id", "genres"]`, 2^20 buckets), computed by serving and by the learner from the
deep features' ids, with no input or event field of its own. The learner learns the wide part
by FTRL.

Top MLP: the interaction's width -> --top widths (last 1), ReLU between layers, sigmoid output.
Linear weights N(0, sqrt(2 / (in + out))), top biases 0, from numpy.random.default_rng(seed). The
bottom bias is U(0.1, 0.5), so that the bottom's ReLU passes its (constant) output and gradient:
its dot products with the item and user rows act as learned per-row biases.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
from gen_dlrm import Tensor, whole, write_safetensors  # noqa: E402

BUCKETS = 1 << 20
FEATURES = [("user_id", "BYTES", 1), ("item_id", "BYTES", 1), ("genres", "BYTES", 4), ("hour", "INT64", 1)]
# crosses of the features above (the spec's crossed features): wide only
CROSSES = [("user_genre", ["user_id", "genres"]), ("user_hour", ["user_id", "hour"])]


def id_fields(dtype, max_ids):
    """The fields of a table fed by an id feature (hashed ids, sum-pooled)."""
    return [
        f"max_ids = {max_ids}",
        'pooling = "sum"',
        f'data_type = "{dtype}"',
        'hash = "xxh3"',
        f"buckets = {BUCKETS}",
    ]


def sparse_table(name, fields, *extra):
    """One `[[parameters.sparse]]` entry named `name`, over its own table."""
    return ["", "[[parameters.sparse]]", f'name = "{name}"', f'table = "{name}"', *fields, *extra]


def config_toml(name, interaction, hash_scale, wide=()):
    lines = [
        f"# DLRM-style MovieLens model for the kiln learn benchmark (bench/learn/gen_movielens_deep.py, {name})",
        'backend = "recsys"',
        'default_model_filename = "model.safetensors"',
        "max_batch_size = 4096",
        "",
        "[instance_group]",
        "count = 1",
        "threads = 1",
        "",
        "[parameters]",
        f'interaction = "{interaction}"',
        'output = "prob"',
        'output_activation = "sigmoid"',
        'dense_input = "dense"',
    ]
    for fname, dtype, max_ids in FEATURES:
        lines += sparse_table(fname, id_fields(dtype, max_ids))
    for fname, dtype, max_ids in FEATURES:
        if fname in wide:
            lines += sparse_table(f"{fname}_w", id_fields(dtype, max_ids), 'part = "wide"')
    for fname, parts in CROSSES:
        if fname in wide:
            cross = "cross = [" + ", ".join(f'"{c}"' for c in parts) + "]"
            fields = [cross, 'pooling = "sum"', f"buckets = {BUCKETS}"]
            lines += sparse_table(f"{fname}_w", fields, 'part = "wide"')
    lines += [
        "",
        "[parameters.table_defaults]",
        'layout = "hashed"',
        'default_row = "hash"',
        f"hash_scale = {hash_scale}",
        'gap_policy = "apply"',
    ]
    for fname in wide:
        lines += ["", f'[parameters.tables."{fname}_w"]', 'default_row = "zeros"']
    return "\n".join(lines) + "\n"


def linear(rng, prefix, n_in, n_out, bias_low=0.0, bias_high=0.0):
    w = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / (n_in + n_out))).astype(np.float32)
    b = rng.uniform(bias_low, bias_high, n_out).astype(np.float32)
    return [Tensor(f"{prefix}.weight", "F32", [n_out, n_in], whole(w)), Tensor(f"{prefix}.bias", "F32", [n_out], whole(b))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="model repository directory")
    p.add_argument("--name", default="movielens_deep")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--top", default="64,1", help="top MLP widths after the interaction, the last 1")
    p.add_argument("--interaction", choices=["dot", "concat"], default="dot")
    p.add_argument("--table-dims", default="", help="per-feature table widths, e.g. user_id=64,item_id=8")
    p.add_argument("--hash-scale", type=float, default=0.01)
    p.add_argument("--wide", default="", help="features that also get a wide (FTRL) input, e.g. user_id,item_id")
    p.add_argument("--seed", type=int, default=5)
    a = p.parse_args()
    top = [int(w) for w in a.top.split(",")]
    if not top or top[-1] != 1 or min(top) < 1:
        raise SystemExit(f"--top {a.top!r}: positive widths, the last 1")
    names = [f for f, _, _ in FEATURES]
    dims = dict.fromkeys(names, a.dim)
    for entry in filter(None, a.table_dims.split(",")):
        fname, _, width = entry.partition("=")
        if fname not in dims or not width.isdigit() or int(width) < 1:
            raise SystemExit(f"--table-dims {entry!r}: FEATURE=WIDTH, FEATURE one of {', '.join(names)}")
        dims[fname] = int(width)
    if a.interaction == "dot" and set(dims.values()) != {a.dim}:
        raise SystemExit(f"--table-dims {a.table_dims!r}: the dot interaction needs every table at --dim {a.dim}")
    wide = [f for f in a.wide.split(",") if f]
    fields = names + [c for c, _ in CROSSES]
    for f in wide:
        if f not in fields:
            raise SystemExit(f"--wide {a.wide!r}: {f!r} is not one of {', '.join(fields)}")
    rng = np.random.default_rng(a.seed)

    tensors = []
    for fname, _, _ in FEATURES:
        tensors += [
            Tensor(f"{fname}.weight", "F32", [1, dims[fname]], whole(np.zeros((1, dims[fname]), np.float32))),
            Tensor(f"{fname}.keys", "I64", [1], whole(np.array([BUCKETS], np.int64))),
        ]
    for fname in [f for f in fields if f in wide]:
        tensors += [
            Tensor(f"{fname}_w.weight", "F32", [1, 1], whole(np.zeros((1, 1), np.float32))),
            Tensor(f"{fname}_w.keys", "I64", [1], whole(np.array([BUCKETS], np.int64))),
        ]
    if wide:
        tensors.append(Tensor("wide.bias", "F32", [1], whole(np.zeros(1, np.float32))))
    tensors += linear(rng, "bottom.0", 1, a.dim, 0.1, 0.5)
    n = len(FEATURES)
    width = a.dim + (n * (n + 1) // 2 if a.interaction == "dot" else sum(dims.values()))
    for j, w in enumerate(top):
        tensors += linear(rng, f"top.{j}", width, w)
        width = w

    model_dir = os.path.join(a.out, a.name)
    os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)
    write_safetensors(os.path.join(model_dir, "1", "model.safetensors"), tensors, {"format": "kiln-movielens-deep-v1"})
    with open(os.path.join(model_dir, "config.toml"), "w") as f:
        f.write(config_toml(a.name, a.interaction, a.hash_scale, wide))
    print(
        f"gen_movielens_deep: wrote {model_dir} (dims {dims}, {a.interaction}, top {a.top}, wide {wide or 'none'})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
