#!/usr/bin/env python3
"""Quantiles of Kiln's latency histograms between two /metrics scrapes.

  hist.py BEFORE.txt AFTER.txt [MODEL]

Prints, for the request, queue, compute and overhead (request minus compute) histograms of
MODEL (default mlp), the count of requests between the scrapes and the p50 / p90 / p99 in
microseconds, interpolated linearly inside the bucket (buckets double from 2 us). For a recsys
model it adds "lookup": the embedding store's lookup calls (one per sparse feature and thread
part of a batch; kiln_embed_lookup_duration_seconds summed over the model's tables).
"""
import re
import sys

LINE = re.compile(r'^(kiln_inference_(\w+)_duration_seconds)_bucket\{le="([^"]+)",model="([^"]+)",version="[^"]+"\} (\S+)$')
LOOKUP = re.compile(r'^kiln_embed_lookup_duration_seconds_bucket\{le="([^"]+)",table="([^"]+)"\} (\S+)$')


def buckets(path, model):
    out = {}
    for line in open(path):
        m = LINE.match(line.strip())
        if m and m.group(4) == model:
            le = float("inf") if m.group(3) == "+Inf" else float(m.group(3))
            out.setdefault(m.group(2), []).append((le, float(m.group(5))))
            continue
        m = LOOKUP.match(line.strip())
        if m and m.group(2).startswith(model + "/"):
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            look = out.setdefault("lookup", {})
            look[le] = look.get(le, 0.0) + float(m.group(3))
    if "lookup" in out:
        out["lookup"] = list(out["lookup"].items())
    return {k: sorted(v) for k, v in out.items()}


def quantile(bs, q):
    total = bs[-1][1]
    if total <= 0:
        return float("nan")
    target, lo, prev = q * total, 0.0, 0.0
    for le, c in bs:
        if c >= target:
            if le == float("inf"):
                return lo
            frac = (target - prev) / (c - prev) if c > prev else 1.0
            return lo + (le - lo) * frac
        lo, prev = le, c
    return lo


def main():
    before, after = buckets(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else "mlp"), None
    after = buckets(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "mlp")
    for name in ("request", "queue", "compute", "overhead", "lookup"):
        a = after.get(name, [])
        b = dict(before.get(name, []))
        diff = [(le, c - b.get(le, 0.0)) for le, c in a]
        if not diff or diff[-1][1] <= 0:
            continue
        p = [quantile(diff, q) * 1e6 for q in (0.5, 0.9, 0.99)]
        print(f"{name:8s} n={int(diff[-1][1]):7d}  p50 {p[0]:9.1f} us  p90 {p[1]:9.1f} us  p99 {p[2]:9.1f} us")


if __name__ == "__main__":
    main()
