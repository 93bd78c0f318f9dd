#!/usr/bin/env python3
"""CPU per request of the server and of the load generator over one perf_analyzer run.

  cpu.py BEFORE.txt AFTER.txt MODEL KILN_TICKS CLIENT_CPU_S CORES

BEFORE/AFTER are /metrics scrapes around the run, KILN_TICKS the server's user+system clock
ticks (/proc/PID/stat, 100 per second) over the run, CLIENT_CPU_S the load generator's user+system
seconds. Prints the requests served, the server's and the client's CPU microseconds per request,
the mean compute time per request, and the ceiling any server could reach on CORES cores shared
with this client: CORES / (client CPU + compute) requests per second, i.e. the rate with zero
server overhead beyond the engine call.
"""
import re
import sys

SUCCESS = re.compile(r'^kiln_inference_request_success_total\{model="([^"]+)",version="[^"]+"\} (\S+)$')
COMPUTE = re.compile(r'^kiln_inference_compute_duration_seconds_(sum|count)\{model="([^"]+)",version="[^"]+"\} (\S+)$')


def read(path, model):
    ok = comp_sum = comp_n = 0.0
    for line in open(path):
        line = line.strip()
        m = SUCCESS.match(line)
        if m and m.group(1) == model:
            ok += float(m.group(2))
            continue
        m = COMPUTE.match(line)
        if m and m.group(2) == model:
            if m.group(1) == "sum":
                comp_sum += float(m.group(3))
            else:
                comp_n += float(m.group(3))
    return ok, comp_sum, comp_n


def main():
    before, after, model, ticks, client_s, cores = sys.argv[1:7]
    b, a = read(before, model), read(after, model)
    n = a[0] - b[0]
    if n <= 0:
        print("  no successful requests in the window")
        return
    kiln_us = float(ticks) / 100 / n * 1e6
    client_us = float(client_s) / n * 1e6
    compute_us = (a[1] - b[1]) / max(a[2] - b[2], 1) * 1e6
    ceiling = float(cores) / ((client_us + compute_us) * 1e-6)
    print(f"  requests {n:.0f}; server CPU {kiln_us:.0f} us/request (compute {compute_us:.0f} us), "
          f"client CPU {client_us:.0f} us/request; ceiling on {cores} cores with this client: "
          f"{ceiling:.0f} requests/s")


if __name__ == "__main__":
    main()
