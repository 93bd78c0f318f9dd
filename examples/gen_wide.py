#!/usr/bin/env python3
"""Writes `ctr_wide`, a wide-only (logistic regression) click-through model for Kiln's native
`recsys` backend, with a few seeded rows and golden predictions computed here in NumPy.

  gen_wide.py [--out DIR] [--name ctr_wide] [--seed 7]

The defaults write examples/models/ctr_wide, the model `kiln learn`'s tests and examples train:

  DIR/NAME/config.toml            Kiln model config (backend = "recsys", every feature part = "wide")
  DIR/NAME/1/model.safetensors    the seeded rows and the bias
  DIR/NAME/golden.json            the seeded rows with their raw ids and keys, and golden predictions

Features (one table each, named like the feature; tables have dim 1, sum pooling):
  user_id   BYTES [N, 1]   e.g. "u42"; the empty string is padding
  item_id   BYTES [N, 1]   e.g. "i7"
  genres    BYTES [N, 4]   multi-hot, e.g. ["Comedy", "Crime", "", ""]
  hour      INT64 [N, 1]   hour of day 0..23; -1 is padding
Every feature has hash = "xxh3" and buckets = 2^20: the key of a string is xxh3-64 of its UTF-8
bytes, of an integer xxh3-64 of its 8 little-endian bytes, then % 2^20 (kiln_recsys::features,
re-implemented below for inputs up to 128 bytes). Bounded keys keep a learner's key space, and the
keys the rows endpoint prints, small.

Math: logit = wide.bias + sum over features of the summed weights of the row's keys; an id
without a row weighs 0 (default_row = "zeros"); prob = sigmoid(logit)  [N, 1].

Tables (table_defaults): layout = "hashed" (any key; deltas add rows), default_row = "zeros",
gap_policy = "apply". A learner publishes absolute row values (FTRL's w), not increments, so a
delta that arrives after a lost one is still correct for every row it carries: applying it (the
gap is logged and counted) leaves only the lost delta's rows stale until they are next
published, where "reject" would refuse every later delta of that source and freeze the replica.

model.safetensors: <table>.weight F32 [R, 1] and <table>.keys I64 [R] (row r holds key keys[r]),
wide.bias F32 [1]. Rows are drawn from numpy.random.default_rng(seed) as N(0, 0.5), the bias is
-1.5 (a base click rate near 18%). Output is deterministic: the same arguments write the same files.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_dlrm import Tensor, whole, write_safetensors  # noqa: E402

BUCKETS = 1 << 20
MAX_IDS = {"user_id": 1, "item_id": 1, "genres": 4, "hour": 1}
DATA_TYPE = {"user_id": "BYTES", "item_id": "BYTES", "genres": "BYTES", "hour": "INT64"}
# ids of 1 to 105 bytes, so golden.json's keys check every length class of the hash
LONG_ITEMS = ["tt0114709/toy-story-1995/animation", "item/" + "0123456789" * 7, "item/" + "abcdefghij" * 10]
SEEDED = {
    "user_id": ["u1", "u2", "u3", "u42"],
    "item_id": ["i1", "i2", "i7", "i9", "i12"] + LONG_ITEMS,
    "genres": ["Action", "Comedy", "Crime", "Drama", "Romance", "Sci-Fi", "Documentary", "(no genres listed)"],
    "hour": [0, 8, 11, 18, 21],
}
BIAS = -1.5
CASES = [
    {"user_id": "u42", "item_id": "i7", "genres": ["Comedy", "Crime"], "hour": 11},
    {"user_id": "u1", "item_id": "i2", "genres": ["Action"], "hour": 21},
    {"user_id": "u3", "item_id": "i12", "genres": ["Drama", "Romance", "Sci-Fi", "Action"], "hour": 8},
    {"user_id": "u2", "item_id": LONG_ITEMS[0], "genres": ["Documentary"], "hour": 0},
    {"user_id": "u1", "item_id": LONG_ITEMS[1], "genres": ["(no genres listed)"], "hour": 11},
    {"user_id": "u42", "item_id": LONG_ITEMS[2], "genres": ["Crime", "Crime"], "hour": 21},
    # unseen user and item, one unseen genre: those weigh 0
    {"user_id": "u999", "item_id": "i404", "genres": ["Comedy", "Western"], "hour": 18},
    # nothing seeded: the bias alone
    {"user_id": "nobody", "item_id": "nothing", "genres": [], "hour": 5},
    # padding everywhere: the bias alone
    {"user_id": "", "item_id": "", "genres": [], "hour": -1},
]

# ---------------------------------------------------------------------------------------------
# XXH3-64, seed 0, default secret, inputs of 0 to 128 bytes (the Rust crate xxhash-rust computes
# the same for every length; ids longer than 128 bytes are refused here)

M64 = (1 << 64) - 1
P32_1, P32_2, P32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
P64_1, P64_2, P64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P_MX1, P_MX2 = 0x165667919E3779F9, 0x9FB21C651E98DF25
SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)


def _r64(b, i):
    return int.from_bytes(b[i:i + 8], "little")


def _r32(b, i):
    return int.from_bytes(b[i:i + 4], "little")


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _fold(a, b):
    p = a * b
    return (p ^ (p >> 64)) & M64


def _xxh64_avalanche(h):
    h ^= h >> 33
    h = (h * P64_2) & M64
    h ^= h >> 29
    h = (h * P64_3) & M64
    return h ^ (h >> 32)


def _avalanche(h):
    h ^= h >> 37
    h = (h * P_MX1) & M64
    return h ^ (h >> 32)


def _mix16(b, i, s):
    return _fold(_r64(b, i) ^ _r64(SECRET, s), _r64(b, i + 8) ^ _r64(SECRET, s + 8))


def xxh3_64(b):
    n = len(b)
    if n == 0:
        return _xxh64_avalanche(_r64(SECRET, 56) ^ _r64(SECRET, 64))
    if n <= 3:
        combined = (b[0] << 16) | (b[n >> 1] << 24) | b[n - 1] | (n << 8)
        return _xxh64_avalanche(combined ^ (_r32(SECRET, 0) ^ _r32(SECRET, 4)))
    if n <= 8:
        x = (_r32(b, n - 4) + (_r32(b, 0) << 32)) ^ (_r64(SECRET, 8) ^ _r64(SECRET, 16))
        x ^= _rotl(x, 49) ^ _rotl(x, 24)
        x = (x * P_MX2) & M64
        x ^= (x >> 35) + n
        x = (x * P_MX2) & M64
        return x ^ (x >> 28)
    if n <= 16:
        lo = _r64(b, 0) ^ (_r64(SECRET, 24) ^ _r64(SECRET, 32))
        hi = _r64(b, n - 8) ^ (_r64(SECRET, 40) ^ _r64(SECRET, 48))
        swapped = int.from_bytes(lo.to_bytes(8, "little"), "big")
        return _avalanche((n + swapped + hi + _fold(lo, hi)) & M64)
    if n <= 128:
        acc = (n * P64_1) & M64
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += _mix16(b, 48, 96) + _mix16(b, n - 64, 112)
                acc += _mix16(b, 32, 64) + _mix16(b, n - 48, 80)
            acc += _mix16(b, 16, 32) + _mix16(b, n - 32, 48)
        acc += _mix16(b, 0, 0) + _mix16(b, n - 16, 16)
        return _avalanche(acc & M64)
    raise ValueError(f"ids of more than 128 bytes are not supported here ({n} bytes)")


def key_of(raw):
    """The table key of a raw id (str or int) under hash = "xxh3", buckets = BUCKETS; None for
    padding ("" or -1)."""
    if isinstance(raw, str):
        if raw == "":
            return None
        return xxh3_64(raw.encode("utf-8")) % BUCKETS
    if raw == -1:
        return None
    return xxh3_64((raw & M64).to_bytes(8, "little")) % BUCKETS


# ---------------------------------------------------------------------------------------------

def config_toml(name):
    lines = [
        f"# Wide-only (logistic regression) click-through model written by examples/gen_wide.py ({name})",
        'backend = "recsys"',
        'default_model_filename = "model.safetensors"',
        "max_batch_size = 4096",
        "",
        "[dynamic_batching]",
        "max_queue_delay_us = 500",
        "",
        "[instance_group]",
        "count = 1",
        "threads = 1",
        "",
        "# every feature is wide: no interaction, no dense input, no MLPs",
        "[parameters]",
        'output = "prob"',
        'output_activation = "sigmoid"',
    ]
    for f, k in MAX_IDS.items():
        lines += ["", "[[parameters.sparse]]", f'name = "{f}"', f'table = "{f}"', f"max_ids = {k}",
                  f'data_type = "{DATA_TYPE[f]}"', 'hash = "xxh3"', f"buckets = {BUCKETS}", 'part = "wide"']
    lines += [
        "",
        "# a learner's deltas carry absolute values: see examples/gen_wide.py for gap_policy",
        "[parameters.table_defaults]",
        'layout = "hashed"',
        'default_row = "zeros"',
        'gap_policy = "apply"',
    ]
    return "\n".join(lines) + "\n"


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "models"), help="model repository directory")
    p.add_argument("--name", default="ctr_wide")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)

    tables, tensors, seeded_json = {}, [], {}
    for f, ids in SEEDED.items():
        keys = np.array([key_of(i) for i in ids], np.int64)
        if len(set(keys.tolist())) != len(keys):
            raise SystemExit(f"{f}: two seeded ids share a key; change the ids")
        weights = (rng.standard_normal(len(ids)) * 0.5).astype(np.float32)
        tables[f] = dict(zip(keys.tolist(), weights.tolist()))
        tensors += [Tensor(f"{f}.weight", "F32", [len(ids), 1], whole(weights.reshape(-1, 1))),
                    Tensor(f"{f}.keys", "I64", [len(ids)], whole(keys))]
        seeded_json[f] = [{"id": i, "key": int(k), "weight": float(w)} for i, k, w in zip(ids, keys, weights)]
    bias = np.array([BIAS], np.float32)
    tensors.append(Tensor("wide.bias", "F32", [1], whole(bias)))

    cases = []
    for c in CASES:
        logit = float(bias[0])
        for f, v in c.items():
            for raw in (v if isinstance(v, list) else [v]):
                k = key_of(raw)
                if k is not None:
                    logit += tables[f].get(k, 0.0)
        cases.append({"features": c, "prob": float(sigmoid(np.float64(logit)))})

    model_dir = os.path.join(a.out, a.name)
    os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)
    write_safetensors(os.path.join(model_dir, "1", "model.safetensors"), tensors,
                      {"format": "kiln-wide-v1", "seed": str(a.seed)})
    with open(os.path.join(model_dir, "config.toml"), "w") as f:
        f.write(config_toml(a.name))
    golden = {"format": "kiln-wide-golden-v1", "buckets": BUCKETS, "max_ids": MAX_IDS,
              "bias": float(bias[0]), "rows": seeded_json, "cases": cases}
    with open(os.path.join(model_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"gen_wide: wrote {model_dir} ({sum(len(v) for v in SEEDED.values())} seeded rows, "
          f"{len(cases)} golden cases)")


if __name__ == "__main__":
    sys.exit(main())
