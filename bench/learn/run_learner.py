"""Runs `kiln learn` over a JSONL event stream and prints its final progressive-validation
figures, read from its /metrics.

    python run_learner.py KILN CONFIG.toml STREAM.jsonl WINDOW_MS [--timeout-s 600]

The learner reads a copy of the stream with one more impression at the end, `bench-end`, at the
last event time plus the join window: it moves the join's event time past every real
impression's window, so each one is learned (the clicked as positives, the rest as negatives)
while `bench-end` itself waits in the joiner. CONFIG must set `sources.follow = true` (the learner
then waits for more lines instead of ending) and `metrics.addr`; the learner writes its metrics
port to a ready file. Once `kiln_learn_samples_total` equals the stream's impressions and the
next metrics tick (every second) has passed, the cumulative `kiln_learn_auc` and
`kiln_learn_logloss` are the figures over the whole stream; the learner is then stopped with
SIGTERM.

Prints one line: `AUC LOGLOSS SAMPLES SECONDS` (SECONDS: from start until every sample was
learned; `-` for what could not be read). The learner's log goes to CONFIG with `.log`.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

TICK_S = 1.0  # the learner exports its quality gauges once a second
POLL_S = 0.1


def gauge(text, name, window="cumulative"):
    m = re.search(rf'^{name}\{{window="{window}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def counter(text, name):
    m = re.search(rf"^{name}_total (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kiln")
    ap.add_argument("config")
    ap.add_argument("stream")
    ap.add_argument("window_ms", type=int)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    a = ap.parse_args()

    base = os.path.splitext(a.config)[0]
    fed = base + ".jsonl"
    impressions, last_ts = 0, 0
    with open(a.stream) as src, open(fed, "w") as dst:
        for line in src:
            dst.write(line)
            ev = json.loads(line)
            last_ts = max(last_ts, ev["ts_ms"])
            impressions += ev["type"] == "impression"
        end = {
            "type": "impression",
            "id": "bench-end",
            "ts_ms": last_ts + a.window_ms,
            "features": {"user_id": "u-end", "item_id": "i-end", "genres": [], "hour": 0},
        }
        dst.write(json.dumps(end, separators=(",", ":")) + "\n")

    ready = base + ".ready"
    if os.path.exists(ready):
        os.remove(ready)
    log = open(base + ".log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [a.kiln, "learn", "--config", a.config, "--jsonl", fed, "--follow", "true", "--ready-file", ready],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = t0 + a.timeout_s
    result = None
    try:
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"kiln learn ended or timed out before it was ready; see {base}.log")
            time.sleep(POLL_S)
        port = json.load(open(ready))["metrics_port"]
        url = f"http://127.0.0.1:{port}/metrics"
        done_at = None
        last_n, last_change = -1, time.monotonic()
        while time.monotonic() < deadline and proc.poll() is None:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            n = counter(text, "kiln_learn_samples")
            now = time.monotonic()
            if n != last_n:
                last_n, last_change = n, now
            if n >= impressions and done_at is None:
                done_at = now
            if done_at is not None and now - done_at > TICK_S * 1.5:
                print(
                    f"kiln learn: {n} samples, {counter(text, 'kiln_learn_joined_positives')} positives; "
                    f"last 10000 samples: auc {gauge(text, 'kiln_learn_auc', 'windowed')}, "
                    f"log loss {gauge(text, 'kiln_learn_logloss', 'windowed')}",
                    file=sys.stderr,
                )
                result = (gauge(text, "kiln_learn_auc"), gauge(text, "kiln_learn_logloss"), n, done_at - t0)
                break
            if now - last_change > 30:
                print(f"kiln learn stopped learning at {n} of {impressions} samples; see {base}.log", file=sys.stderr)
                result = (gauge(text, "kiln_learn_auc"), gauge(text, "kiln_learn_logloss"), n, None)
                break
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    if result is None:
        raise SystemExit(f"no figures from kiln learn; see {base}.log")
    auc, loss, n, secs = result
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{fmt(auc, '.4f')} {fmt(loss, '.4f')} {n} {fmt(secs, '.1f')}")


if __name__ == "__main__":
    main()
