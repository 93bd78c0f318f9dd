#!/usr/bin/env python3
"""Closed-loop gRPC load for bench/pipeline/run.sh: CONC threads, each with its own
tritonclient.grpc connection, sending the next request as soon as the last one returns.

  client.py MODE --url HOST:PORT --data members.npz --models DIR [--conc 8] [--warmup 2] [--seconds 10]

MODE:
  pipeline      one call to `recommend` per user (the golden users)
  member:NAME   one call to NAME (user_tower, coarse_rank or fine_rank) with the exact tensors it
                receives inside the pipeline for those users
  chain         the pipeline done by the client: user_tower over gRPC, retrieve (dot products over
                the 100k-item table and top 1000) in NumPy, coarse_rank over gRPC, top 100 and
                gather in NumPy, fine_rank over gRPC, top 10 in NumPy; the answers are checked
                against golden.json before the run

Prints one JSON line: mode, conc, requests (in the measured window), req_s, p50_ms, p99_ms.
"""
import argparse
import json
import os
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples"))
import pipeline_reference as ref  # noqa: E402


def tensor(name, a):
    a = np.ascontiguousarray(a)
    t = grpcclient.InferInput(name, list(a.shape), "INT64" if a.dtype == np.int64 else "FP32")
    t.set_data_from_numpy(a)
    return t


def top(scores, k):
    """Positions of the k largest scores, descending, ties by lower position (as the server)."""
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


class Work:
    def __init__(self, mode, data, models):
        self.mode, self.d, self.n = mode, data, int(data["n"])
        if mode == "chain":
            items, _ = ref.read_safetensors(os.path.join(models, "recommend", "1", "items.safetensors"))
            self.keys = items["keys"].astype(np.int64)
            self.emb = items["embeddings"].astype(np.float32)

    def call(self, c, i):
        d, i = self.d, i % self.n
        if self.mode == "pipeline":
            r = c.infer("recommend", [tensor("user_features", d[f"user_features_{i}"]),
                                      tensor("user_dense", d[f"user_dense_{i}"]),
                                      tensor("user_id", d[f"user_id_{i}"])])
            return r.as_numpy("item_ids")
        if self.mode.startswith("member:"):
            name = self.mode.split(":", 1)[1]
            ins = {"user_tower": ["user_features"], "coarse_rank": ["features"],
                   "fine_rank": ["sparse_0", "sparse_1", "dense"]}[name]
            return c.infer(name, [tensor(k, d[f"{k}_{i}"]) for k in ins])
        # chain
        user_emb = c.infer("user_tower", [tensor("user_features", d[f"user_features_{i}"])]).as_numpy("user_emb")
        pos = top(self.emb @ user_emb[0], ref.RECALL_K)
        cand_ids = self.keys[pos]
        feats = np.concatenate([np.repeat(user_emb, ref.RECALL_K, axis=0), self.emb[pos]], axis=1)
        coarse = c.infer("coarse_rank", [tensor("features", feats)]).as_numpy("score").reshape(-1)
        short_ids = cand_ids[top(coarse, ref.COARSE_K)]
        fine = c.infer("fine_rank", [
            tensor("sparse_0", short_ids.reshape(-1, 1)),
            tensor("sparse_1", np.repeat(d[f"user_id_{i}"], ref.COARSE_K, axis=0)),
            tensor("dense", np.repeat(d[f"user_dense_{i}"], ref.COARSE_K, axis=0)),
        ]).as_numpy("prob").reshape(-1)
        return short_ids[top(fine, ref.FINAL_K)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--url", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    work = Work(a.mode, dict(np.load(a.data)), a.models)
    if a.mode in ("chain", "pipeline"):
        c = grpcclient.InferenceServerClient(a.url)
        for i in range(work.n):
            got = list(work.call(c, i))
            want = list(work.d[f"golden_ids_{i}"])
            if got != want:
                raise SystemExit(f"{a.mode}: user {i}: item_ids {got} != golden {want}")
    start = time.perf_counter()
    t0, t1 = start + a.warmup, start + a.warmup + a.seconds
    lat = [[] for _ in range(a.conc)]
    errors = []

    def worker(k):
        try:
            c = grpcclient.InferenceServerClient(a.url)
            i = k
            while True:
                s = time.perf_counter()
                if s >= t1:
                    return
                work.call(c, i)
                e = time.perf_counter()
                if s >= t0 and e <= t1:
                    lat[k].append(e - s)
                i += a.conc
        except Exception as exc:  # reported below; the run is then invalid
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{a.mode}: {errors[0]}")
    all_lat = np.sort(np.concatenate([np.asarray(x) for x in lat])) * 1e3
    print(json.dumps({
        "mode": a.mode, "conc": a.conc, "requests": int(all_lat.size),
        "req_s": round(all_lat.size / a.seconds, 1),
        "p50_ms": round(float(np.percentile(all_lat, 50)), 3),
        "p99_ms": round(float(np.percentile(all_lat, 99)), 3),
    }))


if __name__ == "__main__":
    main()
