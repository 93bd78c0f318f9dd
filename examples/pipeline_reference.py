#!/usr/bin/env python3
"""Reference implementation of the `recommend` pipeline (examples/gen_pipeline.py) in NumPy, and
the writer of its golden outputs.

  pipeline_reference.py [--models DIR] [--seed 13] [--cases 8]

Reads the written files only (no code is shared with the generator): the ONNX models' initializers
(onnx.numpy_helper) run through a small interpreter of the operators they use (Gemm, Relu,
Sigmoid); fine_rank's safetensors file and the item table are parsed here by hand; F16 item
embeddings become float32 exactly. Everything is computed in float32, as the server computes it.

The chain (recommend/config.toml spells the same steps):
  user_emb  = user_tower(user_features)                                  [1,16]
  recall    = the 1000 items with the largest user_emb . embedding       ids [1000], emb [1000,16]
  coarse    = coarse_rank([user_emb repeated, emb] along axis 1)         [1000]
  shortlist = ids of the 100 best coarse scores
  fine      = fine_rank(sparse_0 = shortlist [100,1], sparse_1 = user_id repeated [100,1],
                        dense = user_dense repeated [100,13])            [100]
              (ids become table rows as the recsys backend does: key = id % buckets, hash none)
  item_ids, scores = the 10 best fine scores and their items, best first
Every top-k sorts by descending score, ties by lower position first.

Golden cases: users drawn from numpy.random.default_rng(seed * 1000 + 950) (features and dense
N(0,1); user ids alternately below 10000 and up to 10^9), keeping the first `cases` whose every
cut has a clear margin (the score gap at each top-k boundary and between consecutive final
scores), so that float32 rounding that differs from NumPy's cannot change the ids. golden.json:
  {"model": "recommend", "score_tolerance": 1e-4,
   "cases": [{"inputs": [KServe JSON tensors], "outputs": [item_ids, scores],
              "margins": {"recall": ., "coarse": ., "fine": .}}]}
"""
import argparse
import json
import os
import tomllib

import numpy as np
import onnx
from onnx import numpy_helper

RECALL_K, COARSE_K, FINAL_K = 1000, 100, 10
K_CASES = 950
SCORE_TOLERANCE = 1e-4
# smallest accepted gaps at the cuts: recall scores are dot products of size ~1 (float32
# rounding ~1e-6), the ranking scores are probabilities
MIN_RECALL_GAP, MIN_PROB_GAP = 1e-4, 2e-5
MAX_TRIES = 400
ST_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}


# ---------------------------------------------------------------------------------------------
# file readers

def read_safetensors(path):
    """{name: numpy array} and the metadata of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, h in header.items():
        lo, hi = h["data_offsets"]
        a = np.frombuffer(data[lo:hi], dtype=ST_DTYPES[h["dtype"]])
        out[name] = a.reshape(h["shape"])
    return out, meta


class OnnxMlp:
    """Runs an ONNX graph made of Gemm, Relu and Sigmoid nodes in float32."""

    def __init__(self, path):
        m = onnx.load(path)
        self.graph = m.graph
        self.inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in m.graph.initializer}
        self.input = m.graph.input[0].name
        self.output = m.graph.output[0].name

    def __call__(self, x):
        env = dict(self.inits)
        env[self.input] = np.asarray(x, np.float32)
        for node in self.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            ins = [env[i] for i in node.input]
            if node.op_type == "Gemm":
                a, b = ins[0], ins[1]
                if attrs.get("transA", 0):
                    a = a.T
                if attrs.get("transB", 0):
                    b = b.T
                y = np.float32(attrs.get("alpha", 1.0)) * (a @ b)
                if len(ins) > 2:
                    y = y + np.float32(attrs.get("beta", 1.0)) * ins[2]
            elif node.op_type == "Relu":
                y = np.maximum(ins[0], np.float32(0))
            elif node.op_type == "Sigmoid":
                y = sigmoid(ins[0])
            else:
                raise ValueError(f"{node.op_type} is not supported by this reference")
            env[node.output[0]] = y.astype(np.float32)
        return env[self.output]


def sigmoid(x):
    x = np.asarray(x, np.float32)
    return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


class Dlrm:
    """The recsys backend's math for fine_rank: concat interaction, sum pooling, sigmoid."""

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.toml"), "rb") as f:
            cfg = tomllib.load(f)
        p = cfg["parameters"]
        if p.get("interaction", "concat") != "concat" or p.get("output_activation", "sigmoid") != "sigmoid":
            raise ValueError("fine_rank: expected a concat interaction and a sigmoid")
        w, _ = read_safetensors(os.path.join(model_dir, "1", cfg.get("default_model_filename", "model.safetensors")))
        self.features = []
        for s in p["sparse"]:
            if s.get("hash", "none") != "none" or s.get("pooling", "sum") != "sum":
                raise ValueError(f"{s['name']}: expected hash none and sum pooling")
            self.features.append((s["name"], w[f"{s['table']}.weight"].astype(np.float32), s.get("buckets")))
        self.dense_input = p["dense_input"]
        self.output = p.get("output", "prob")
        self.bottom = layers(w, "bottom")
        self.top = layers(w, "top")

    def __call__(self, inputs):
        x = np.asarray(inputs[self.dense_input], np.float32)
        for wt, b in self.bottom:
            x = np.maximum(x @ wt.T + b, np.float32(0))
        parts = [x]
        for name, table, buckets in self.features:
            ids = np.asarray(inputs[name], np.int64)
            pooled = np.zeros((ids.shape[0], table.shape[1]), np.float32)
            for j in range(ids.shape[1]):
                col = ids[:, j]
                if np.any(col < -1):
                    raise ValueError(f"{name}: negative ids other than -1 are not handled here")
                keys = col % buckets if buckets else col
                ok = (col >= 0) & (keys < table.shape[0])  # keys without a row pool zeros
                pooled[ok] += table[keys[ok]]
            parts.append(pooled)
        z = np.concatenate(parts, axis=1)
        for j, (wt, b) in enumerate(self.top):
            z = (z @ wt.T + b).astype(np.float32)
            if j < len(self.top) - 1:
                z = np.maximum(z, np.float32(0))
        return sigmoid(z)


def layers(w, prefix):
    out, j = [], 0
    while f"{prefix}.{j}.weight" in w:
        out.append((w[f"{prefix}.{j}.weight"].astype(np.float32), w[f"{prefix}.{j}.bias"].astype(np.float32)))
        j += 1
    return out


# ---------------------------------------------------------------------------------------------
# the pipeline

def topk(scores, k):
    """Positions of the k largest scores, descending, ties by lower position; and the gap
    between the k-th and the (k+1)-th score (inf when there is none)."""
    order = np.argsort(-scores, kind="stable")
    gap = float(scores[order[k - 1]] - scores[order[k]]) if len(scores) > k else float("inf")
    return order[:k], gap


class Recommend:
    def __init__(self, models):
        self.user_tower = OnnxMlp(os.path.join(models, "user_tower", "1", "model.onnx"))
        self.coarse_rank = OnnxMlp(os.path.join(models, "coarse_rank", "1", "model.onnx"))
        self.fine_rank = Dlrm(os.path.join(models, "fine_rank"))
        items, _ = read_safetensors(os.path.join(models, "recommend", "1", "items.safetensors"))
        self.keys = items["keys"].astype(np.int64)
        self.emb = items["embeddings"].astype(np.float32)  # F16 -> F32 is exact

    def __call__(self, user_features, user_dense, user_id):
        user_emb = self.user_tower(user_features)  # [1, 16]
        recall = (self.emb @ user_emb[0]).astype(np.float32)  # [items]
        pos, recall_gap = topk(recall, RECALL_K)
        cand_ids, cand_emb = self.keys[pos], self.emb[pos]
        features = np.concatenate([np.repeat(user_emb, RECALL_K, axis=0), cand_emb], axis=1)
        coarse = self.coarse_rank(features).reshape(RECALL_K)
        pos, coarse_gap = topk(coarse, COARSE_K)
        short_ids = cand_ids[pos]
        fine = self.fine_rank({
            "sparse_0": short_ids.reshape(COARSE_K, 1),
            "sparse_1": np.repeat(np.asarray(user_id, np.int64).reshape(1, 1), COARSE_K, axis=0),
            "dense": np.repeat(np.asarray(user_dense, np.float32).reshape(1, -1), COARSE_K, axis=0),
        }).reshape(COARSE_K)
        pos, cut_gap = topk(fine, FINAL_K)
        scores = fine[pos]
        fine_gap = min([cut_gap] + [float(a - b) for a, b in zip(scores[:-1], scores[1:])])
        margins = {"recall": recall_gap, "coarse": coarse_gap, "fine": fine_gap}
        return short_ids[pos].astype(np.int64), scores.astype(np.float32), margins


# ---------------------------------------------------------------------------------------------

def tensor_json(name, a, datatype):
    a = np.ascontiguousarray(a)
    data = [float(v) for v in a.ravel()] if datatype == "FP32" else [int(v) for v in a.ravel()]
    return {"name": name, "datatype": datatype, "shape": list(a.shape), "data": data}


def golden_cases(rec, seed, n):
    rng = np.random.default_rng(seed * 1000 + K_CASES)
    cases, tries = [], 0
    while len(cases) < n:
        if tries == MAX_TRIES:
            raise SystemExit(f"only {len(cases)} of {tries} users have clear margins; try another --seed")
        features = rng.standard_normal((1, 32)).astype(np.float32)
        dense = rng.standard_normal((1, 13)).astype(np.float32)
        high = 10000 if tries % 2 == 0 else 10**9
        user_id = rng.integers(0, high, size=(1, 1), dtype=np.int64)
        tries += 1
        ids, scores, m = rec(features, dense, user_id)
        if m["recall"] < MIN_RECALL_GAP or m["coarse"] < MIN_PROB_GAP or m["fine"] < MIN_PROB_GAP:
            continue
        cases.append({
            "inputs": [tensor_json("user_features", features, "FP32"), tensor_json("user_dense", dense, "FP32"),
                       tensor_json("user_id", user_id, "INT64")],
            "outputs": [tensor_json("item_ids", ids, "INT64"), tensor_json("scores", scores, "FP32")],
            "margins": {k: float(np.float32(v)) for k, v in m.items()},
        })
    return cases, tries


def dump(cases):
    # one tensor per line: readable diffs without one number per line
    lines = ["{", ' "model": "recommend",', ' "written_by": "examples/pipeline_reference.py",',
             f' "score_tolerance": {SCORE_TOLERANCE},', ' "cases": [']
    for i, c in enumerate(cases):
        lines.append("  {")
        for key in ("inputs", "outputs"):
            lines.append(f'   "{key}": [')
            lines += ["    " + json.dumps(t) + ("," if j + 1 < len(c[key]) else "") for j, t in enumerate(c[key])]
            lines.append("   ],")
        lines.append('   "margins": ' + json.dumps(c["margins"]))
        lines.append("  }" + ("," if i + 1 < len(cases) else ""))
    lines += [" ]", "}"]
    return "\n".join(lines) + "\n"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=os.path.join(here, "models"), help="repository directory (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--cases", type=int, default=8)
    a = ap.parse_args()
    rec = Recommend(a.models)
    cases, tries = golden_cases(rec, a.seed, a.cases)
    path = os.path.join(a.models, "recommend", "golden.json")
    with open(path, "w") as f:
        f.write(dump(cases))
    big = sum(any(v >= 10000 for v in c["outputs"][0]["data"]) for c in cases)
    print(f"pipeline_reference: wrote {path}: {len(cases)} cases ({tries} users tried, {big} cases return "
          f"item ids >= 10000); smallest margins recall {min(c['margins']['recall'] for c in cases):.3g}, "
          f"coarse {min(c['margins']['coarse'] for c in cases):.3g}, fine {min(c['margins']['fine'] for c in cases):.3g}")


if __name__ == "__main__":
    main()
