#!/usr/bin/env python3
"""Writes a DLRM-style reference recommendation model for Kiln's native `recsys` backend, plus
golden inputs and outputs computed by an independent NumPy implementation of the same math.

  gen_dlrm.py --out DIR [--name dlrm] [--rows-per-table 10000] [--seed 42] [--tables 26] [--dim 64]
              [--ids-per-feature 20] [--dense 13] [--bottom 512,256,64] [--top 1024,1024,512,256,1]
              [--interaction concat|dot] [--golden-rows 64] [--max-batch-size 4096] [--threads 2]

The defaults are the reference model: 26 sparse features with one table each (dim 64, 20 ids per
feature per row), 13 dense features, bottom MLP 13-512-256-64, concat interaction, top MLP
1728-1024-1024-512-256-1 and a sigmoid. With --rows-per-table 1000000 the model file is 6.7 GB;
it is generated and written one tensor (and one 65536-row chunk of a table) at a time, so memory
use stays small.

Output (a Kiln model repository entry):

  DIR/NAME/config.toml              Kiln model config (backend = "recsys")
  DIR/NAME/1/model.safetensors      the weights
  DIR/NAME/golden.safetensors       golden inputs, reference outputs and an online-update delta

Files are safetensors, written by hand: u64 little-endian header length N, N bytes of JSON header
(padded with spaces so the data starts at a 4096-byte boundary; N includes the padding), then the
raw little-endian tensor data, contiguous, in header order. Each header entry is
{"dtype": "F32"|"I64", "shape": [...], "data_offsets": [begin, end]} (offsets relative to the start
of the data); "__metadata__" maps strings to strings.

model.safetensors (names and layouts shared with a PyTorch / ONNX Runtime peer reading the file):
  emb.{i}.weight                  F32 [R, dim]   row r is the embedding of id r, i = 0..tables-1
  bottom.{j}.weight / .bias       F32 [out, in] / [out]   nn.Linear layout: y = x W^T + b
  top.{j}.weight / .bias          F32 [out, in] / [out]
  __metadata__ = {"format": "dlrm-ref-v1", "arch": <JSON string of the architecture>}
  Init, each tensor from numpy.random.default_rng(seed * 1000 + k) with a fixed k per tensor
  (emb.i: k = i; bottom.j weight/bias: k = 500 + 2j / 501 + 2j; top.j: k = 700 + 2j / 701 + 2j):
  tables U(-1/8, 1/8) (float32 draws, 65536 rows at a time); Linear weight N(0, sqrt(2/(in+out)));
  bias N(0, sqrt(1/out)).

Math (`forward` below):
  bottom   x = dense; for every Linear: x = relu(x @ W.T + b)  (ReLU after every layer, the last too)
  pooling  feature i has ids int64 [N, K]; -1 is padding and ignored; an id that is not a row of
           the table contributes a zero row; pooled_i = sum of the table rows of the ids (all
           padding -> zeros)
  concat   z = [bottom_out, pooled_0, ..., pooled_{T-1}]                      width dim * (T + 1)
  dot      v_0 = bottom_out, v_{1+i} = pooled_i;
           z = [bottom_out] + [v_a . v_b for a in 1..T for b in 0..a-1]   width dim + T (T + 1) / 2
  top      ReLU between Linear layers, none after the last; prob = sigmoid(top(z))  [N, 1]
  The golden outputs are computed in float64 (weights cast to float64) and stored as float32.

golden.safetensors (inputs from default_rng(seed * 1000 + 900), delta from seed * 1000 + 901):
  sparse_{i}        I64 [G, K]     ids uniform in [0, R), about 20% set to -1; row 0 of every
                                   feature has no padding, row 1 of sparse_0 and row G-1 of every
                                   feature are all padding
  dense             F32 [G, dense] N(0, 1)
  prob              F32 [G, 1]     reference output
  delta.keys        I64 [10]       8 distinct ids that occur in the golden sparse_D ids, then 2 ids
                                   >= R (new rows; sparse_D also uses them in rows 2-4, where
                                   before the delta they contribute zero rows)
  delta.values      F32 [10, dim]  U(-0.5, 0.5): the new rows of table emb.D
  prob_after_delta  F32 [G, 1]     reference output after the rows of emb.D are replaced / added
  __metadata__ = {"format": "dlrm-ref-golden-v1", "delta_table": "emb.D", "delta_feature":
  "sparse_D", ...}, D = 3 (or tables-1 when there are fewer than 4 tables).

config.toml: backend "recsys", one [[parameters.sparse]] per feature (sparse_i -> emb.i, sum
pooling, max_ids = K). Output is deterministic: the same arguments write byte-identical files.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

FORMAT = "dlrm-ref-v1"
GOLDEN_FORMAT = "dlrm-ref-golden-v1"
ALIGN = 4096
CHUNK_ROWS = 65536
TABLE_BOUND = 1.0 / 8.0
DELTA_EXISTING = 8
DELTA_NEW = 2
PAD_FRACTION = 0.2
MIN_DIFF = 1e-3
# per-tensor RNG index k (seed * 1000 + k)
K_EMB, K_BOTTOM, K_TOP, K_GOLDEN, K_DELTA = 0, 500, 700, 900, 901
MAX_TABLES, MAX_LAYERS = 500, 100
ST_DTYPE = {"F32": np.dtype("<f4"), "I64": np.dtype("<i8")}


# ---------------------------------------------------------------------------------------------
# safetensors writer (streaming)

class Tensor:
    """One tensor to write: its name, dtype ("F32"/"I64"), shape, and a function returning an
    iterator of numpy arrays whose concatenation (row-major) is the tensor's data."""

    def __init__(self, name, dtype, shape, chunks):
        self.name, self.dtype, self.shape, self.chunks = name, dtype, [int(d) for d in shape], chunks

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * ST_DTYPE[self.dtype].itemsize


def whole(array):
    return lambda: iter([array])


def write_safetensors(path, tensors, metadata):
    """Writes `tensors` (a list of Tensor) in order; only one chunk is in memory at a time."""
    header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for t in tensors:
        if t.name in header:
            raise ValueError(f"duplicate tensor name {t.name}")
        header[t.name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    n = -(-(8 + len(raw)) // ALIGN) * ALIGN - 8  # header length so that the data starts aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(n.to_bytes(8, "little"))
        f.write(raw + b" " * (n - len(raw)))
        for t in tensors:
            want, written = t.nbytes, 0
            for chunk in t.chunks():
                chunk = np.ascontiguousarray(chunk, dtype=ST_DTYPE[t.dtype])
                f.write(chunk.data)
                written += chunk.nbytes
            if written != want:
                raise RuntimeError(f"{t.name}: wrote {written} bytes, expected {want}")
        size = f.tell()
    if size != 8 + n + offset:
        raise RuntimeError(f"{path}: size {size} != {8 + n + offset}")
    os.replace(tmp, path)
    return size


# ---------------------------------------------------------------------------------------------
# architecture and weights

def make_arch(a):
    bottom = [a.dense] + a.bottom
    if a.bottom[-1] != a.dim:
        raise SystemExit(f"the last bottom width ({a.bottom[-1]}) must equal --dim ({a.dim})")
    if a.interaction == "concat":
        top_in = a.dim * (a.tables + 1)
    else:
        top_in = a.dim + (a.tables + 1) * a.tables // 2
    top = [top_in] + a.top
    if a.top[-1] != 1:
        raise SystemExit("the last top width must be 1 (output prob [N, 1])")
    if not 1 <= a.tables <= MAX_TABLES or len(a.bottom) > MAX_LAYERS or len(a.top) > MAX_LAYERS:
        raise SystemExit(f"at most {MAX_TABLES} tables and {MAX_LAYERS} layers per MLP")
    return {
        "format": FORMAT,
        "seed": a.seed,
        "dense": a.dense,
        "dim": a.dim,
        "tables": [{"name": f"emb.{i}", "feature": f"sparse_{i}", "rows": a.rows_per_table,
                    "dim": a.dim, "max_ids": a.ids_per_feature, "pooling": "sum"} for i in range(a.tables)],
        "bottom": bottom,
        "bottom_activation": "relu",
        "bottom_final_relu": True,
        "interaction": a.interaction,
        "top": top,
        "top_activation": "relu",
        "output_activation": "sigmoid",
        "output": "prob",
    }


def linear_params(prefix, widths, seed, k0):
    """Linear layers prefix.{j}: weight [out, in] ~ N(0, sqrt(2/(in+out))), bias [out] ~ N(0, sqrt(1/out))."""
    out = {}
    for j, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        rng = np.random.default_rng(seed * 1000 + k0 + 2 * j)
        out[f"{prefix}.{j}.weight"] = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / (fan_in + fan_out))).astype(np.float32)
        rng = np.random.default_rng(seed * 1000 + k0 + 2 * j + 1)
        out[f"{prefix}.{j}.bias"] = (rng.standard_normal(fan_out) * np.sqrt(1.0 / fan_out)).astype(np.float32)
    return out


def table_chunks(i, rows, dim, seed, capture_ids, captured):
    """Generates emb.{i}.weight in CHUNK_ROWS-row chunks; copies the rows whose ids are in
    `capture_ids` (sorted, unique, all < rows) into captured[i] as float64 [len(capture_ids), dim]."""
    def gen():
        rng = np.random.default_rng(seed * 1000 + K_EMB + i)
        got = np.zeros((len(capture_ids), dim), np.float64)
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            chunk = rng.random((n, dim), dtype=np.float32) * np.float32(2 * TABLE_BOUND) - np.float32(TABLE_BOUND)
            lo, hi = np.searchsorted(capture_ids, [start, start + n])
            got[lo:hi] = chunk[capture_ids[lo:hi] - start]
            yield chunk
        captured[i] = got
    return gen


# ---------------------------------------------------------------------------------------------
# NumPy reference

def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def sum_pool(table, ids):
    """table = (keys int64 [M] sorted unique, rows float64 [M, dim]); ids int64 [N, K], -1 padding.
    Ids that are not keys of the table contribute zero rows."""
    keys, rows = table
    if ids.ndim != 2 or np.any(ids < -1):
        raise ValueError("ids must be [N, K] with -1 as the only negative value")
    pos = np.searchsorted(keys, ids)
    pos_c = np.minimum(pos, len(keys) - 1) if len(keys) else np.zeros_like(pos)
    present = (ids >= 0) & (pos < len(keys))
    if len(keys):
        present &= keys[pos_c] == ids
    gathered = rows[pos_c] if len(keys) else np.zeros(ids.shape + (rows.shape[1],))
    return (gathered * present[..., None]).sum(axis=1)


def forward(weights, dense, sparse_list, arch):
    """The reference DLRM forward in float64.

    weights: "bottom.{j}.weight"/".bias", "top.{j}.weight"/".bias" arrays (nn.Linear layout) and
    "emb.{i}" = (keys, rows): the table as sorted unique int64 ids and their float64 rows (a full
    table [R, dim] is keys = arange(R)); an id that is not a key is a zero row.
    dense: [N, dense]; sparse_list: T arrays of int64 ids [N, K] (-1 = padding). Returns prob [N, 1]."""
    x = np.asarray(dense, np.float64)
    for j in range(len(arch["bottom"]) - 1):
        w = np.asarray(weights[f"bottom.{j}.weight"], np.float64)
        b = np.asarray(weights[f"bottom.{j}.bias"], np.float64)
        x = relu(x @ w.T + b)
    pooled = [sum_pool(weights[f"emb.{i}"], np.asarray(ids, np.int64)) for i, ids in enumerate(sparse_list)]
    if arch["interaction"] == "concat":
        z = np.concatenate([x] + pooled, axis=1)
    elif arch["interaction"] == "dot":
        v = [x] + pooled
        pairs = [np.sum(v[a] * v[b], axis=1, keepdims=True) for a in range(1, len(v)) for b in range(a)]
        z = np.concatenate([x] + pairs, axis=1)
    else:
        raise ValueError(f"unknown interaction {arch['interaction']}")
    n_top = len(arch["top"]) - 1
    for j in range(n_top):
        w = np.asarray(weights[f"top.{j}.weight"], np.float64)
        b = np.asarray(weights[f"top.{j}.bias"], np.float64)
        z = z @ w.T + b
        if j < n_top - 1:
            z = relu(z)
    return sigmoid(z)


def apply_delta(table, keys, values):
    """Returns the (keys, rows) table with rows `keys` replaced by / added as `values`."""
    old_keys, old_rows = table
    keep = ~np.isin(old_keys, keys)
    all_keys = np.concatenate([old_keys[keep], keys])
    all_rows = np.concatenate([old_rows[keep], np.asarray(values, np.float64)])
    order = np.argsort(all_keys, kind="stable")
    return all_keys[order], all_rows[order]


# ---------------------------------------------------------------------------------------------
# golden inputs

def golden_inputs(a, delta_feature):
    G, K, R = a.golden_rows, a.ids_per_feature, a.rows_per_table
    rng = np.random.default_rng(a.seed * 1000 + K_GOLDEN)
    dense = rng.standard_normal((G, a.dense)).astype(np.float32)
    sparse = []
    for _ in range(a.tables):
        ids = rng.integers(0, R, size=(G, K), dtype=np.int64)
        pad = rng.random((G, K)) < PAD_FRACTION
        pad[0] = False  # row 0: no padding in any feature
        ids[pad] = -1
        ids[G - 1] = -1  # last row: every feature all padding
        sparse.append(ids)
    sparse[0][1] = -1  # row 1 of sparse_0: all padding
    new_keys = np.array([R, R + 7], np.int64)  # not rows of the table before the delta
    d = sparse[delta_feature]
    d[2, 0] = new_keys[0]
    d[3, 0] = new_keys[0]
    d[3, K - 1] = new_keys[1]
    d[4, K - 1] = new_keys[1]
    return dense, sparse, new_keys


# ---------------------------------------------------------------------------------------------

def config_toml(a):
    lines = [
        f"# DLRM-style reference model written by examples/gen_dlrm.py (seed {a.seed}, {a.rows_per_table} rows per table)",
        'backend = "recsys"',
        'default_model_filename = "model.safetensors"',
        f"max_batch_size = {a.max_batch_size}",
        "",
        "[dynamic_batching]",
        "max_queue_delay_us = 500",
        "",
        "[instance_group]",
        "count = 1",
        f"threads = {a.threads}",
        "",
        "[parameters]",
        f'interaction = "{a.interaction}"',
        'output = "prob"',
        'output_activation = "sigmoid"',
        'dense_input = "dense"',
    ]
    for i in range(a.tables):
        lines += ["", "[[parameters.sparse]]", f'name = "sparse_{i}"', f'table = "emb.{i}"',
                  f"max_ids = {a.ids_per_feature}", 'pooling = "sum"']
    return "\n".join(lines) + "\n"


def widths(s):
    try:
        w = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths, got {s!r}")
    if not w or min(w) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {s!r}")
    return w


def human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="model repository directory")
    p.add_argument("--name", default="dlrm")
    p.add_argument("--rows-per-table", type=int, default=10000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tables", type=int, default=26)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ids-per-feature", type=int, default=20)
    p.add_argument("--dense", type=int, default=13)
    p.add_argument("--bottom", type=widths, default=[512, 256, 64])
    p.add_argument("--top", type=widths, default=[1024, 1024, 512, 256, 1])
    p.add_argument("--interaction", choices=["concat", "dot"], default="concat")
    p.add_argument("--golden-rows", type=int, default=64)
    p.add_argument("--max-batch-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    for flag in ("rows_per_table", "dim", "ids_per_feature", "dense", "max_batch_size", "threads"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if a.seed < 0:
        p.error("--seed must be >= 0")
    if a.golden_rows < 6:
        p.error("--golden-rows must be at least 6")
    t0 = time.time()
    arch = make_arch(a)
    R, T = a.rows_per_table, a.tables
    delta_feature = 3 if T > 3 else T - 1

    # golden inputs first: they decide which table rows the reference needs
    dense, sparse, new_keys = golden_inputs(a, delta_feature)
    d_ids = sparse[delta_feature]
    seen = np.unique(d_ids[(d_ids >= 0) & (d_ids < R)])
    if len(seen) < DELTA_EXISTING:
        raise SystemExit(f"sparse_{delta_feature} has only {len(seen)} distinct ids; raise --golden-rows or --rows-per-table")
    drng = np.random.default_rng(a.seed * 1000 + K_DELTA)
    delta_keys = np.concatenate([np.sort(drng.choice(seen, DELTA_EXISTING, replace=False)), new_keys]).astype(np.int64)
    delta_values = drng.uniform(-0.5, 0.5, size=(len(delta_keys), a.dim)).astype(np.float32)
    needed = [np.unique(ids[(ids >= 0) & (ids < R)]).astype(np.int64) for ids in sparse]

    # model file, streamed
    mlp = linear_params("bottom", arch["bottom"], a.seed, K_BOTTOM)
    mlp.update(linear_params("top", arch["top"], a.seed, K_TOP))
    captured = {}
    tensors = [Tensor(f"emb.{i}.weight", "F32", [R, a.dim], table_chunks(i, R, a.dim, a.seed, needed[i], captured))
               for i in range(T)]
    tensors += [Tensor(k, "F32", v.shape, whole(v)) for k, v in mlp.items()]
    model_dir = os.path.join(a.out, a.name)
    os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)
    model_path = os.path.join(model_dir, "1", "model.safetensors")
    model_size = write_safetensors(model_path, tensors, {"format": FORMAT, "arch": json.dumps(arch, separators=(",", ":"))})

    # reference outputs
    weights = {k: v.astype(np.float64) for k, v in mlp.items()}
    for i in range(T):
        weights[f"emb.{i}"] = (needed[i], captured[i])
    prob = forward(weights, dense, sparse, arch)
    after = dict(weights)
    after[f"emb.{delta_feature}"] = apply_delta(weights[f"emb.{delta_feature}"], delta_keys, delta_values)
    prob_after = forward(after, dense, sparse, arch)
    affected = np.isin(d_ids, delta_keys).any(axis=1)
    diff = np.abs(prob_after - prob)[:, 0]
    if diff[affected].max() <= MIN_DIFF:
        raise SystemExit(f"delta changes prob by at most {diff[affected].max():.3g}; try another --seed")
    if diff[~affected].max(initial=0.0) > 1e-12:
        raise SystemExit("delta changed rows that do not use its ids (bug)")

    golden = [Tensor(f"sparse_{i}", "I64", ids.shape, whole(ids)) for i, ids in enumerate(sparse)]
    golden += [
        Tensor("delta.keys", "I64", delta_keys.shape, whole(delta_keys)),
        Tensor("dense", "F32", dense.shape, whole(dense)),
        Tensor("prob", "F32", prob.shape, whole(prob.astype(np.float32))),
        Tensor("delta.values", "F32", delta_values.shape, whole(delta_values)),
        Tensor("prob_after_delta", "F32", prob_after.shape, whole(prob_after.astype(np.float32))),
    ]
    golden_path = os.path.join(model_dir, "golden.safetensors")
    golden_meta = {"format": GOLDEN_FORMAT, "model": a.name, "seed": str(a.seed),
                   "delta_table": f"emb.{delta_feature}", "delta_feature": f"sparse_{delta_feature}"}
    golden_size = write_safetensors(golden_path, golden, golden_meta)

    config_path = os.path.join(model_dir, "config.toml")
    with open(config_path, "w") as f:
        f.write(config_toml(a))
    print(f"gen_dlrm: wrote {config_path}, {model_path} ({human(model_size)}), {golden_path} ({human(golden_size)}); "
          f"{T} tables x {R} rows x {a.dim}, {a.interaction}, {a.golden_rows} golden rows "
          f"(delta max |dprob| {diff[affected].max():.3g} on {int(affected.sum())} rows) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
