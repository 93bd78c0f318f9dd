"""Reference learners for the `kiln learn` quality benchmark, on a JSONL event stream.

Reads the stream `movielens_stream.py` writes (the schema `kiln learn` reads), turns it into
labelled samples, and runs, with progressive validation (each sample is scored before it is
learned, in stream order):

  ftrl     textbook FTRL-Proximal (McMahan et al. 2013, Algorithm 1), per-coordinate alpha, beta,
           l1, l2, on binary features: one coordinate per (feature, value), plus a bias coordinate
           that every sample has. No hashing collisions: coordinates are keyed by the value itself.
  count    a counting baseline: the item's click-through rate so far, smoothed towards the global
           rate so far with a prior of K impressions: (clicks_i + K * ctr) / (imps_i + K).
  count_ui the user's and the item's smoothed rates combined in log-odds around the global rate:
           logit(p) = logit(p_user) + logit(p_item) - logit(ctr). With K = 10 this is the
           counting baseline of the benchmark (AUC 0.764 on MovieLens-small in impression order;
           the item's rate alone reaches 0.673).

Sample order (--order):
  impression  (default) samples in impression order, labelled by whether a positive action for
              the impression appears anywhere in the stream;
  join        the order an event-time join emits them: a positive when its first positive action
              arrives, a negative when its window (--window-ms after the impression) has passed,
              i.e. at the first event whose ts_ms >= impression ts_ms + window; at the end of the
              stream the open impressions close as negatives, oldest first.
              --read-batch N closes windows only before every N-th event, as a learner that
              reads events in batches and expires windows once per batch does: within a batch
              the positives are then learned before the negatives.
              The join's order follows the labels: positives are learned seconds after their
              impressions, negatives a whole window later, in clumps. On MovieLens that inflates
              progressive-validation AUC (FTRL 0.831 with a 30 min window against 0.776 in
              impression order); with a window just above the click delay (5 s) the two orders
              agree within 0.001. Compare a learner with the reference run in the same order.

Batches (--batch B, FTRL): every sample of a batch of B is scored before any is learned. Users
rate in bursts (a burst's ratings often share a timestamp), and FTRL's gain comes from learning a
user's first ratings before scoring the next: in impression order its AUC is 0.776 at B = 1,
0.759 at 16, 0.708 at 256, 0.683 at 1024. A trainer scored batch-wise matches the reference run
with its batch size, not the per-sample one.

Prints one line per learner: AUC, log loss, samples, positive rate; --json adds a JSON line.

    python reference.py STREAM.jsonl [--order impression|join] [--window-ms 1800000]
        [--alpha 1 --beta 1 --l1 1 --l2 1] [--batch 1] [--max-multi 4] [--no-bias] [--count-k 10]
"""

import argparse
import json
import math
import sys
from collections import OrderedDict


def load_samples(path, order, window_ms, positive, max_multi, read_batch=1):
    """(features, label) pairs: features a list of (name, value) in the impression's order."""

    def feats(ev):
        out = []
        for name, value in ev["features"].items():
            if isinstance(value, list):
                vals = value[:max_multi] if max_multi else value
                out.extend((name, v) for v in vals)
            else:
                out.append((name, value))
        return out

    samples = []
    if order == "impression":
        imps, clicked = [], set()
        with open(path) as f:
            for line in f:
                ev = json.loads(line)
                if ev["type"] == "impression":
                    imps.append((ev["id"], feats(ev)))
                elif ev.get("action") in positive:
                    clicked.add(ev["id"])
        return [(x, ev_id in clicked) for ev_id, x in imps]

    open_imps = OrderedDict()  # id -> (ts_ms, features), in arrival order
    watermark = 0

    def expire():
        while open_imps:
            first_id, (first_ts, x) = next(iter(open_imps.items()))
            if first_ts + window_ms > watermark:
                break
            del open_imps[first_id]
            samples.append((x, False))

    with open(path) as f:
        for n, line in enumerate(f):
            ev = json.loads(line)
            ts = ev["ts_ms"]
            if n % read_batch == 0:
                expire()
            watermark = max(watermark, ts)
            if ev["type"] == "impression":
                open_imps[ev["id"]] = (ts, feats(ev))
            elif ev.get("action") in positive and ev["id"] in open_imps:
                if ts < open_imps[ev["id"]][0] + window_ms:
                    _, x = open_imps.pop(ev["id"])
                    samples.append((x, True))
    expire()
    samples.extend((x, False) for _, x in open_imps.values())
    return samples


def sigmoid(t):
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


def logit(p):
    return math.log(p / (1.0 - p))


def ftrl(samples, alpha, beta, l1, l2, bias, batch=1):
    """FTRL-Proximal, Algorithm 1 of McMahan et al. 2013, x_i = 1 for every present feature.

    With batch > 1 every sample of a batch is scored before any of them is learned (then they
    are learned one by one, in order), as a trainer that scores a whole batch first does.
    """
    z, n = {}, {}

    def weight(i):
        zi = z.get(i, 0.0)
        if abs(zi) <= l1:
            return 0.0
        return -(zi - math.copysign(l1, zi)) / ((beta + math.sqrt(n.get(i, 0.0))) / alpha + l2)

    def coords_of(x):
        return ([("", "bias")] if bias else []) + list(x)

    probs = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        if batch > 1:
            probs.extend(sigmoid(sum(weight(i) for i in coords_of(x))) for x, _ in chunk)
        for x, y in chunk:
            coords = coords_of(x)
            ws = [weight(i) for i in coords]
            p = sigmoid(sum(ws))
            if batch == 1:
                probs.append(p)
            g = p - (1.0 if y else 0.0)
            g2 = g * g
            for i, w in zip(coords, ws):
                ni = n.get(i, 0.0)
                sigma = (math.sqrt(ni + g2) - math.sqrt(ni)) / alpha
                z[i] = z.get(i, 0.0) + g - sigma * w
                n[i] = ni + g2
    return probs


def counting(samples, k, use_user):
    """Smoothed item (and user) click-through rates counted so far."""
    clicks, imps = {}, {}
    total_c, total_n = 0, 0
    probs = []
    for x, y in samples:
        ctr = (total_c + 1.0) / (total_n + 2.0)
        d = dict(x)  # single-valued features; a multi-hot feature keeps its last value, unused
        keys = [("item_id", d["item_id"])]
        if use_user:
            keys.append(("user_id", d["user_id"]))
        rates = [(clicks.get(key, 0) + k * ctr) / (imps.get(key, 0) + k) for key in keys]
        if use_user:
            p = sigmoid(sum(logit(r) for r in rates) - (len(rates) - 1) * logit(ctr))
        else:
            p = rates[0]
        probs.append(p)
        for key in keys:
            imps[key] = imps.get(key, 0) + 1
            clicks[key] = clicks.get(key, 0) + int(y)
        total_n += 1
        total_c += int(y)
    return probs


def auc(labels, probs):
    """Area under the ROC curve, ties counted one half (average ranks)."""
    order = sorted(range(len(probs)), key=probs.__getitem__)
    rank_sum_pos = 0.0
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and probs[order[j + 1]] == probs[order[i]]:
            j += 1
        avg_rank = (i + j) / 2.0 + 1.0
        rank_sum_pos += avg_rank * sum(1 for t in range(i, j + 1) if labels[order[t]])
        i = j + 1
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(labels, probs, eps=1e-7):
    total = 0.0
    for y, p in zip(labels, probs):
        p = min(max(p, eps), 1.0 - eps)
        total -= math.log(p) if y else math.log(1.0 - p)
    return total / len(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stream")
    ap.add_argument("--order", choices=["impression", "join"], default="impression")
    ap.add_argument("--window-ms", type=int, default=30 * 60 * 1000)
    ap.add_argument(
        "--read-batch", type=int, default=1, help="join: close windows only before every N-th event (1: before each)"
    )
    ap.add_argument("--positive", default="click", help="comma-separated positive actions")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--l1", type=float, default=1.0)
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--no-bias", action="store_true", help="FTRL without the bias coordinate")
    ap.add_argument("--batch", type=int, default=1, help="FTRL scores this many samples before learning them")
    ap.add_argument("--max-multi", type=int, default=0, help="keep the first N values of a list feature (0: all)")
    ap.add_argument("--count-k", type=float, default=10.0, help="the counting baseline's prior, in impressions")
    ap.add_argument("--learners", default="ftrl,count,count_ui")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = ap.parse_args()

    samples = load_samples(
        args.stream, args.order, args.window_ms, set(args.positive.split(",")), args.max_multi, args.read_batch
    )
    labels = [y for _, y in samples]
    pos_rate = sum(labels) / max(len(labels), 1)
    results = {}
    for name in args.learners.split(","):
        if name == "ftrl":
            probs = ftrl(samples, args.alpha, args.beta, args.l1, args.l2, not args.no_bias, args.batch)
        elif name == "count":
            probs = counting(samples, args.count_k, use_user=False)
        elif name == "count_ui":
            probs = counting(samples, args.count_k, use_user=True)
        else:
            sys.exit(f"unknown learner {name!r}")
        results[name] = {"auc": auc(labels, probs), "log_loss": log_loss(labels, probs)}
        print(
            f"{name:9s} auc {results[name]['auc']:.4f}  log_loss {results[name]['log_loss']:.4f}  "
            f"samples {len(labels)}  positives {pos_rate:.4f}  order {args.order}"
        )
    if args.json:
        print(json.dumps({"order": args.order, "samples": len(labels), "positive_rate": pos_rate, **results}))


if __name__ == "__main__":
    main()
