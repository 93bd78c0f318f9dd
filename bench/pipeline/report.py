#!/usr/bin/env python3
"""results.md for one bench/pipeline/run.sh run: report.py OUT_DIR (reads rows.jsonl,
steps_c1.json and machine.txt there)."""
import json
import os
import sys


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


def main():
    out = sys.argv[1]
    rows = [json.loads(line) for line in open(os.path.join(out, "rows.jsonl")) if line.strip()]
    steps = json.load(open(os.path.join(out, "steps_c1.json")))
    by = {(r["label"], r.get("client"), r["conc"]): r for r in rows}
    slow = steps["slowest_member"]
    p = print

    p("# recommend pipeline and response cache\n")
    p("```")
    p(open(os.path.join(out, "machine.txt")).read().rstrip())
    p("```\n")

    p("## 1. Throughput: pipeline against its slowest member alone and against client-side chaining\n")
    p(f"Slowest member by compute time per call (Kiln's histograms, concurrency 1): **{slow}** "
      f"({steps['members'][slow]['compute_per_call_us']:.1f} us per call).\n")
    p("| client | conc | pipeline req/s | member alone req/s | retrieve alone req/s | chain req/s | pipeline / member "
      "| pipeline / retrieve | pipeline / chain | load avg |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for c in (2, 8):
        pa_p, pa_m = by.get(("recommend", "perf_analyzer", c)), by.get((f"member-{slow}", "perf_analyzer", c))
        py_p, py_m = by.get(("pipeline", "client.py", c)), by.get((f"member-{slow}", "client.py", c))
        py_c = by.get(("chain", "client.py", c))
        g = lambda r: r and r.get("req_s")  # noqa: E731
        pa_r = by.get(("recall-only", "perf_analyzer", c))
        p(f"| perf_analyzer | {c} | {fmt(g(pa_p))} | {fmt(g(pa_m))} | {fmt(g(pa_r))} | - | {ratio(g(pa_p), g(pa_m))} | "
          f"{ratio(g(pa_p), g(pa_r))} | - | {pa_p and pa_p['load']} |")
        p(f"| client.py | {c} | {fmt(g(py_p))} | {fmt(g(py_m))} | - | {fmt(g(py_c))} | {ratio(g(py_p), g(py_m))} | - | "
          f"{ratio(g(py_p), g(py_c))} | {py_p and py_p['load']} |")
    p("")

    p("## 2. Pipeline overhead at concurrency 1 (Kiln's histograms)\n")
    p(f"{steps['requests']} pipeline requests. Means per pipeline request:\n")
    p("| quantity | us |")
    p("|---|---|")
    p(f"| pipeline request | {steps['request_us']:.1f} |")
    p(f"| sum of all steps | {steps['step_sum_us']:.1f} |")
    p(f"| - model steps (member request time as the pipeline sees it) | {steps['member_step_sum_us']:.1f} |")
    p(f"| - op steps (retrieve, concat, repeat, topk, gather, reshape) | {steps['op_step_sum_us']:.1f} |")
    p(f"| sum of member compute | {steps['member_compute_sum_us']:.1f} |")
    p("")
    p(f"- (request - sum of steps) / request = **{steps['overhead_over_steps'] * 100:.2f}%**")
    p(f"- (request - sum of member compute) / request = **{steps['overhead_over_compute'] * 100:.2f}%**")
    p(f"- (request - member compute - op steps) / request = **{steps['overhead_over_compute_and_ops'] * 100:.2f}%**\n")
    p("| step | us per pipeline request | member compute per call us | member request per call us |")
    p("|---|---|---|---|")
    for k, v in steps["steps_us"].items():
        m = steps["members"].get(k)
        p(f"| {k} | {v:.1f} | {fmt(m and m['compute_per_call_us'])} | {fmt(m and m['request_per_call_us'])} |")
    p("")

    p("## 3. recommend latency and throughput (perf_analyzer, gRPC)\n")
    p("| conc | req/s | p50 ms | p99 ms | load avg |")
    p("|---|---|---|---|---|")
    for c in (1, 2, 8):
        r = by.get(("recommend", "perf_analyzer", c))
        if r:
            p(f"| {c} | {fmt(r['req_s'])} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | {r['load']} |")
    p("")

    p("## 4. Response cache on recommend (perf_analyzer, gRPC)\n")
    p("| run | conc | req/s | p50 ms | p99 ms | cache_hit | cache_miss | hit rate | load avg |")
    p("|---|---|---|---|---|---|---|---|---|")
    for label, c in (("cache-miss", 1), ("cache-hit", 1), ("cache-0pct", 8), ("cache-90pct", 8)):
        r, s = by.get((label, "perf_analyzer", c)), by.get((label + "-stats", None, c))
        if r:
            p(f"| {label} | {c} | {fmt(r['req_s'])} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | "
              f"{s and s['cache_hit']} | {s and s['cache_miss']} | "
              f"{fmt(s and s['hit_rate'] is not None and s['hit_rate'] * 100, 1)}% | {r['load']} |")
    hit, miss = by.get(("cache-hit", "perf_analyzer", 1)), by.get(("cache-miss", "perf_analyzer", 1))
    h90, h0 = by.get(("cache-90pct", "perf_analyzer", 8)), by.get(("cache-0pct", "perf_analyzer", 8))
    if hit and miss:
        p(f"\n- hit / miss latency: p50 {ratio(hit['p50_ms'], miss['p50_ms'])}, p99 {ratio(hit['p99_ms'], miss['p99_ms'])}")
    if h90 and h0:
        p(f"- throughput at the measured hit rate of the 90% run / 0% hits: {ratio(h90['req_s'], h0['req_s'])}")

    if os.path.exists(os.path.join(out, "steps_nodelay_r1.json")):
        p("\n## 5. Members with max_queue_delay_us = 0 (user_tower, fine_rank) against the shipped 200 us\n")
        p("Servers alternate: shipped, no delay, shipped, no delay.\n")
        p("| run | conc | req/s | p50 ms | p99 ms | request us (c1) | model steps us (c1) | overhead over steps | "
          "over compute + ops | load avg |")
        p("|---|---|---|---|---|---|---|---|---|---|")
        for rnd in (1, 2):
            for v in ("delay200", "nodelay"):
                st = json.load(open(os.path.join(out, f"steps_{v}_r{rnd}.json")))
                for c in (1, 8):
                    r = by.get((f"recommend-{v}-r{rnd}", "perf_analyzer", c))
                    if not r:
                        continue
                    extra = (f"{st['request_us']:.1f} | {st['member_step_sum_us']:.1f} | "
                             f"{st['overhead_over_steps'] * 100:.2f}% | {st['overhead_over_compute_and_ops'] * 100:.2f}%"
                             if c == 1 else "- | - | - | -")
                    p(f"| {v} r{rnd} | {c} | {fmt(r['req_s'])} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | "
                      f"{extra} | {r['load']} |")

    loose = [f"{r['label']} c{r['conc']}" for r in rows if r.get("stability_pct") == 50]
    if loose:
        p("\nperf_analyzer runs that found no window stable within 20% and were taken again at 50%: " + ", ".join(loose))


if __name__ == "__main__":
    main()
