#!/usr/bin/env python3
"""The server's CPU time per thread over one perf_analyzer run, per request.

  threads.py snap PID > FILE
  threads.py diff BEFORE AFTER METRICS_BEFORE METRICS_AFTER MODEL

`snap` writes one line per thread of PID: id, name, nanoseconds on the CPU
(/proc/PID/task/TID/schedstat) and involuntary context switches (the times the thread was
preempted while it could still run). `diff` prints, per thread name, the CPU microseconds and
preemptions per request over the window (requests from the /metrics scrapes, as cpu.py reads
them), next to the mean compute time (the wall-clock time of the engine call that the server's
compute histogram records). A worker thread whose CPU time per batch is below its compute time
lost the difference to the other threads on its core while it computed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu import read  # noqa: E402


def snap(pid):
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        base = f"/proc/{pid}/task/{tid}"
        try:
            name = open(f"{base}/comm").read().strip()
            ns = int(open(f"{base}/schedstat").read().split()[0])
            nv = 0
            for line in open(f"{base}/status"):
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    nv = int(line.split()[1])
        except OSError:
            continue
        print(tid, name.replace(" ", "_"), ns, nv)


def load(path):
    out = {}
    for line in open(path):
        tid, name, ns, nv = line.split()
        out[tid] = (name, int(ns), int(nv))
    return out


def diff(before, after, m_before, m_after, model):
    b, a = load(before), load(after)
    mb, ma = read(m_before, model), read(m_after, model)
    n = ma[0] - mb[0]
    if n <= 0:
        print("  no successful requests in the window")
        return
    compute_us = (ma[1] - mb[1]) / max(ma[2] - mb[2], 1) * 1e6
    per_name = {}
    for tid, (name, ns, nv) in a.items():
        ns0, nv0 = b.get(tid, (name, 0, 0))[1:]
        cpu, pre = per_name.get(name, (0, 0))
        per_name[name] = (cpu + ns - ns0, pre + nv - nv0)
    print(f"  requests {n:.0f}, compute (wall, engine call) {compute_us:.0f} us/request")
    for name, (ns, nv) in sorted(per_name.items(), key=lambda kv: -kv[1][0]):
        if ns <= 0:
            continue
        print(f"  thread {name:<16} CPU {ns / 1e3 / n:7.1f} us/request, preempted {nv / n:5.2f} times/request")


if __name__ == "__main__":
    if sys.argv[1] == "snap":
        snap(sys.argv[2])
    else:
        diff(*sys.argv[2:7])
