#!/usr/bin/env python3
"""The recommend pipeline's time, from Kiln's own histograms between two /metrics scrapes.

  steps.py BEFORE.txt AFTER.txt [PIPELINE] [--json OUT.json]

Means per pipeline request (histogram sum difference / pipeline request count difference) of:
the pipeline's request time, each step (kiln_pipeline_step_duration_seconds), and each member
model's compute and request time (kiln_inference_*_duration_seconds); then
  overhead over steps   = (request - sum of steps) / request
  overhead over compute = (request - sum of member compute) / request
and the member whose compute time per call is largest (the slowest member). Members are the
models named by the pipeline's model steps that received calls between the scrapes; the scrapes
must bracket pipeline traffic only.
"""
import json
import re
import sys

SERIES = re.compile(r'^(kiln_[a-z_]+)_(sum|count)\{([^}]*)\} (\S+)$')


def parse(path):
    out = {}
    for line in open(path):
        m = SERIES.match(line.strip())
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in m.group(3).split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        key = (m.group(1), labels.get("model"), labels.get("step"))
        out.setdefault(key, {})[m.group(2)] = float(m.group(4))
    return out


def diff(a, b, key):
    x, y = a.get(key, {}), b.get(key, {})
    return y.get("sum", 0.0) - x.get("sum", 0.0), y.get("count", 0.0) - x.get("count", 0.0)


def main():
    args = [x for x in sys.argv[1:] if not x.startswith("--")]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    if out_json in args:
        args.remove(out_json)
    before, after = parse(args[0]), parse(args[1])
    pipe = args[2] if len(args) > 2 else "recommend"
    req_s, n = diff(before, after, ("kiln_inference_request_duration_seconds", pipe, None))
    if n <= 0:
        raise SystemExit(f"no {pipe} requests between the scrapes")
    steps = {}
    for key in after:
        if key[0] == "kiln_pipeline_step_duration_seconds" and key[1] == pipe:
            s, _ = diff(before, after, key)
            steps[key[2]] = s / n
    members = {}
    for key in after:
        if key[0] == "kiln_inference_compute_duration_seconds" and key[1] != pipe and key[1] in steps:
            s, c = diff(before, after, key)
            if c > 0:
                rs, rc = diff(before, after, ("kiln_inference_request_duration_seconds", key[1], None))
                members[key[1]] = {"calls": c, "compute_per_call_us": s / c * 1e6,
                                   "request_per_call_us": rs / rc * 1e6 if rc else float("nan"),
                                   "compute_per_pipeline_us": s / n * 1e6}
    req = req_s / n
    step_sum = sum(steps.values())
    compute_sum = sum(m["compute_per_pipeline_us"] for m in members.values()) / 1e6
    op_sum = sum(v for k, v in steps.items() if k not in members)
    slowest = max(members, key=lambda m: members[m]["compute_per_call_us"])
    res = {
        "pipeline": pipe, "requests": int(n), "request_us": req * 1e6, "step_sum_us": step_sum * 1e6,
        "op_step_sum_us": op_sum * 1e6, "member_step_sum_us": (step_sum - op_sum) * 1e6,
        "member_compute_sum_us": compute_sum * 1e6,
        "overhead_over_steps": (req - step_sum) / req,
        "overhead_over_compute": (req - compute_sum) / req,
        "overhead_over_compute_and_ops": (req - compute_sum - op_sum) / req,
        "slowest_member": slowest, "members": members,
        "steps_us": {k: v * 1e6 for k, v in sorted(steps.items(), key=lambda kv: -kv[1])},
    }
    print(f"{pipe}: {int(n)} requests; mean request {req * 1e6:.1f} us; sum of steps {step_sum * 1e6:.1f} us "
          f"(ops {op_sum * 1e6:.1f} us, member steps {(step_sum - op_sum) * 1e6:.1f} us); "
          f"sum of member compute {compute_sum * 1e6:.1f} us")
    print(f"overhead over steps {res['overhead_over_steps'] * 100:.2f}%; over member compute "
          f"{res['overhead_over_compute'] * 100:.2f}%; over member compute + op steps "
          f"{res['overhead_over_compute_and_ops'] * 100:.2f}%")
    for k, v in res["steps_us"].items():
        extra = ""
        if k in members:
            m = members[k]
            extra = f"  (member: compute {m['compute_per_call_us']:.1f} us, request {m['request_per_call_us']:.1f} us per call)"
        print(f"  step {k:16s} {v:9.1f} us{extra}")
    print(f"slowest member by compute: {slowest}")
    if out_json:
        json.dump(res, open(out_json, "w"), indent=1)


if __name__ == "__main__":
    main()
