#!/usr/bin/env python3
"""perf_analyzer input files for bench/pipeline/run.sh.

  gen_inputs.py MODELS_DIR OUT_DIR [--unique N] [--hot-total N]

Writes into OUT_DIR:
  recommend.json      the golden users of recommend/golden.json, one entry each
  user_tower.json     per-row entries of the tensors each member receives inside the pipeline for
  coarse_rank.json    those users (from the NumPy reference chain of examples/pipeline_reference.py):
  fine_rank.json      user_features [1,32], coarse features [1000,32], fine inputs [100,*]; send
                      with -b 1 / 1000 / 100 (rows of one user are consecutive entries)
  recall_only.json    user_emb [1,16] of those users: the input of the retrieve step (run.sh serves
                      it alone as the one-step pipeline recall_only)
  members.npz         the same tensors whole, for client.py
  distinct_a.json     N users that never repeat (cache misses); distinct_b.json another N, none
  distinct_b.json     of them in distinct_a.json or hot90.json
  repeat.json         one user (cache hits after the first request)
  hot90.json          --hot-total entries: 90% drawn from the 8 golden users, 10% users that occur
                      once (in random order)
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples"))
import pipeline_reference as ref  # noqa: E402


def user_entry(f, d, uid):
    return {
        "user_features": {"content": [round(float(v), 6) for v in f.ravel()], "shape": [1, 32]},
        "user_dense": {"content": [round(float(v), 6) for v in d.ravel()], "shape": [1, 13]},
        "user_id": {"content": [int(uid)], "shape": [1, 1]},
    }


def member_tensors(rec, f, d, uid):
    """The tensors user_tower, coarse_rank and fine_rank receive inside the pipeline."""
    user_emb = rec.user_tower(f)
    recall = (rec.emb @ user_emb[0]).astype(np.float32)
    pos, _ = ref.topk(recall, ref.RECALL_K)
    cand_ids, cand_emb = rec.keys[pos], rec.emb[pos]
    coarse_in = np.concatenate([np.repeat(user_emb, ref.RECALL_K, axis=0), cand_emb], axis=1).astype(np.float32)
    coarse = rec.coarse_rank(coarse_in).reshape(ref.RECALL_K)
    pos, _ = ref.topk(coarse, ref.COARSE_K)
    short_ids = cand_ids[pos].astype(np.int64)
    fine_in = {
        "sparse_0": short_ids.reshape(ref.COARSE_K, 1),
        "sparse_1": np.full((ref.COARSE_K, 1), int(uid), np.int64),
        "dense": np.repeat(np.asarray(d, np.float32).reshape(1, -1), ref.COARSE_K, axis=0),
    }
    return f.astype(np.float32), coarse_in, fine_in


def dump(path, entries):
    with open(path, "w") as fh:
        json.dump({"data": entries}, fh, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("out")
    ap.add_argument("--unique", type=int, default=30000)
    ap.add_argument("--hot-total", type=int, default=60000)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    golden = json.load(open(os.path.join(a.models, "recommend", "golden.json")))["cases"]
    users = []
    for c in golden:
        t = {x["name"]: x for x in c["inputs"]}
        users.append((np.array(t["user_features"]["data"], np.float32).reshape(1, 32),
                      np.array(t["user_dense"]["data"], np.float32).reshape(1, 13),
                      int(t["user_id"]["data"][0])))
    dump(os.path.join(a.out, "recommend.json"), [user_entry(*u) for u in users])

    rec = ref.Recommend(a.models)
    ut, cr, fr, ro = [], [], [], []
    npz = {}
    for i, (f, d, uid) in enumerate(users):
        uf, coarse_in, fine_in = member_tensors(rec, f, d, uid)
        ids, _, _ = rec(f, d, np.array([[uid]], np.int64))
        assert list(ids) == golden[i]["outputs"][0]["data"], "reference chain disagrees with golden.json"
        ro.append({"user_emb": {"content": [float(v) for v in rec.user_tower(uf)[0]], "shape": [1, 16]}})
        ut.append({"user_features": {"content": [float(v) for v in uf[0]], "shape": [32]}})
        cr += [{"features": {"content": [float(v) for v in row], "shape": [32]}} for row in coarse_in]
        fr += [{"sparse_0": {"content": [int(fine_in["sparse_0"][r, 0])], "shape": [1]},
                "sparse_1": {"content": [int(fine_in["sparse_1"][r, 0])], "shape": [1]},
                "dense": {"content": [float(v) for v in fine_in["dense"][r]], "shape": [13]}}
               for r in range(ref.COARSE_K)]
        npz[f"user_features_{i}"] = uf
        npz[f"features_{i}"] = coarse_in
        for k, v in fine_in.items():
            npz[f"{k}_{i}"] = v
        npz[f"user_dense_{i}"] = d
        npz[f"user_id_{i}"] = np.array([[uid]], np.int64)
        npz[f"golden_ids_{i}"] = np.array(golden[i]["outputs"][0]["data"], np.int64)
    dump(os.path.join(a.out, "user_tower.json"), ut)
    dump(os.path.join(a.out, "coarse_rank.json"), cr)
    dump(os.path.join(a.out, "fine_rank.json"), fr)
    dump(os.path.join(a.out, "recall_only.json"), ro)
    np.savez(os.path.join(a.out, "members.npz"), n=len(users), **npz)

    rng = np.random.default_rng(20261206)

    def fresh(n, base):
        f = rng.standard_normal((n, 1, 32)).astype(np.float32)
        d = rng.standard_normal((n, 1, 13)).astype(np.float32)
        # user ids base, base+1, ... make every entry distinct whatever the features
        return [user_entry(f[j], d[j], base + j) for j in range(n)]

    dump(os.path.join(a.out, "distinct_a.json"), fresh(a.unique, 10**9))
    dump(os.path.join(a.out, "distinct_b.json"), fresh(a.unique, 3 * 10**9))
    dump(os.path.join(a.out, "repeat.json"), [user_entry(*users[0])])
    n_unique = a.hot_total // 10
    entries = [user_entry(*users[j % len(users)]) for j in range(a.hot_total - n_unique)] + fresh(n_unique, 2 * 10**9)
    order = rng.permutation(len(entries))
    dump(os.path.join(a.out, "hot90.json"), [entries[j] for j in order])
    print(f"gen_inputs: {len(users)} golden users; distinct {a.unique}; hot90 {a.hot_total} "
          f"({n_unique} unique) -> {a.out}")


if __name__ == "__main__":
    main()
