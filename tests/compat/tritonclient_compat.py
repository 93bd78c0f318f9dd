#!/usr/bin/env python3
"""Checks a running server against NVIDIA's own Triton clients (tritonclient 2.51).

  tritonclient_compat.py --http HOST:PORT --grpc HOST:PORT --models DIR [--wait-s 60]

For the models `mlp` and `ranker` of the repository DIR it sends seeded random batches (the ranker's
int64 ids include negative and huge values) and compares the answers with onnxruntime run in
process on DIR/<model>/1/model.onnx, within an absolute tolerance of 1e-5, over:
  - tritonclient.http with JSON tensors in both directions,
  - tritonclient.http with binary tensors in both directions (the binary-tensor extension),
  - tritonclient.grpc (ModelInfer), concurrent async_infer calls, and a bidirectional stream
    (start_stream + async_stream_infer, ModelStreamInfer),
  - DIR/<model>/expected.json (the committed golden batch) when present,
  - system shared memory over both protocols (inputs and outputs in registered regions; the
    server must be started with --allow-client-shm);
plus health, metadata, model configuration, repository index and statistics calls over both
protocols and error answers for an unknown model. The pipeline `recommend` (recall -> coarse ->
fine ranking) is driven over both protocols too: its answers must equal DIR/recommend/golden.json
(an independent NumPy chain), and its configuration must read as a Triton ensemble. Then the
checks of triton_extras.py (compression, error texts, repository API, log, trace, CUDA shared
memory, classification, BYTES), which need the server in explicit model-control mode with every
model loaded and the BYTES model `strings` in DIR; --backend names the server's ONNX backend.
One line per check, then `N passed, M failed`; the exit status is non-zero when any check fails.
"""
import argparse
import json
import os
import queue
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

import triton_extras

MODELS = ("mlp", "ranker")
ATOL = 1e-5  # absolute tolerance against onnxruntime
TIMEOUT_S = 60
# gRPC codes that may answer a request for a model the server does not have
GRPC_UNKNOWN_MODEL = ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")
ORT_TO_KSERVE = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
                 "tensor(double)": "FP64", "tensor(bool)": "BOOL"}
KSERVE_TO_NP = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP64": np.float64, "BOOL": np.bool_}
I64 = np.iinfo(np.int64)
# ids the ranker must accept: negative, at and beyond the table size, the int64 extremes
ODD_IDS = [-1, -999, -1000, -1001, 1000, 1999, 10**12, -(10**12), I64.max, I64.min, I64.min + 1, 2**53 + 1]


class Model:
    """One model of the repository: its onnxruntime reference and what the server should report."""

    def __init__(self, models_dir, name):
        self.name = name
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        path = os.path.join(models_dir, name, "1", "model.onnx")
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, ORT_TO_KSERVE[i.type], i.shape) for i in self.sess.get_inputs()]
        self.outputs = [(o.name, ORT_TO_KSERVE[o.type], o.shape) for o in self.sess.get_outputs()]
        cfg_path = os.path.join(models_dir, name, "config.toml")
        cfg = {}
        if os.path.exists(cfg_path):
            with open(cfg_path, "rb") as f:
                cfg = tomllib.load(f)
        self.max_batch_size = int(cfg.get("max_batch_size", 0))
        self.expected_path = os.path.join(models_dir, name, "expected.json")
        self.ok_requests = 0  # requests answered correctly so far, for the statistics checks

    def __str__(self):
        return self.name

    def dims(self, shape):
        """Configured dims of an ONNX shape: without the batch dim when batching, -1 for symbols."""
        d = [s if isinstance(s, int) else -1 for s in shape]
        return d[1:] if self.max_batch_size > 0 else d

    def batch(self, rows, seed):
        """Seeded random inputs for `rows` rows, as {name: array}."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, dt, shape in self.inputs:
            full = [rows] + [s if isinstance(s, int) else 1 for s in shape[1:]]
            if dt == "INT64":
                a = rng.integers(0, 1000, full, dtype=np.int64)
                flat = a.reshape(-1)
                odd = rng.choice(ODD_IDS, size=min(len(ODD_IDS), flat.size // 3), replace=False)
                flat[rng.choice(flat.size, size=odd.size, replace=False)] = odd
                feeds[name] = a
            else:
                feeds[name] = rng.standard_normal(full).astype(KSERVE_TO_NP[dt])
        return feeds

    def reference(self, feeds):
        names = [o[0] for o in self.outputs]
        return dict(zip(names, self.sess.run(names, feeds)))


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn, *args):
        try:
            detail = fn(*args)
        except Exception as e:  # every failure is reported, none stops the run
            self.failed += 1
            msg = str(e).strip().replace("\n", " ")
            print(f"FAIL {name}: {type(e).__name__}: {msg[:500]}", flush=True)
            return
        self.passed += 1
        print(f"ok   {name}" + (f" ({detail})" if detail else ""), flush=True)


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def compare(model, got, want):
    """Checks every output's dtype, shape and values; returns the largest absolute difference."""
    worst = 0.0
    for name, ref in want.items():
        a = got.get(name)
        expect(a is not None, f"output '{name}' missing")
        expect(a.dtype == ref.dtype, f"{name}: dtype {a.dtype}, expected {ref.dtype}")
        expect(tuple(a.shape) == tuple(ref.shape), f"{name}: shape {list(a.shape)}, expected {list(ref.shape)}")
        expect(np.all(np.isfinite(a)), f"{name}: non-finite values")
        diff = float(np.max(np.abs(a.astype(np.float64) - ref.astype(np.float64)))) if a.size else 0.0
        expect(diff <= ATOL, f"{name}: max abs diff {diff:.3g} > {ATOL}")
        worst = max(worst, diff)
    model.ok_requests += 1
    return worst


# ------------------------------------------------------------------------------------- HTTP

def http_inputs(model, feeds, binary):
    out = []
    for name, dt, _ in model.inputs:
        i = httpclient.InferInput(name, list(feeds[name].shape), dt)
        i.set_data_from_numpy(feeds[name], binary_data=binary)
        out.append(i)
    return out


def http_infer(c, model, rows, seed, binary, version=""):
    feeds = model.batch(rows, seed)
    outs = [httpclient.InferRequestedOutput(o[0], binary_data=binary) for o in model.outputs]
    res = c.infer(model.name, http_inputs(model, feeds, binary), model_version=version, outputs=outs,
                  request_id=f"http-{seed}")
    for o in model.outputs:
        meta = res.get_output(o[0])
        expect(meta is not None, f"output '{o[0]}' missing")
        has_binary = "binary_data_size" in (meta.get("parameters") or {})
        if binary:
            expect(has_binary, f"output '{o[0]}' came back as JSON, binary was asked for")
        else:
            expect(not has_binary and "data" in meta, f"output '{o[0]}' came back binary, JSON was asked for")
    got = {o[0]: res.as_numpy(o[0]) for o in model.outputs}
    diff = compare(model, got, model.reference(feeds))
    rid = res.get_response().get("id")
    expect(rid == f"http-{seed}", f"response id {rid!r}, expected 'http-{seed}'")
    return f"{rows} rows, max abs diff {diff:.2g}"


def http_golden(c, model):
    with open(model.expected_path) as f:
        doc = json.load(f)
    inputs = []
    for t in doc["inputs"]:
        i = httpclient.InferInput(t["name"], t["shape"], t["datatype"])
        i.set_data_from_numpy(np.array(t["data"], KSERVE_TO_NP[t["datatype"]]).reshape(t["shape"]), binary_data=False)
        inputs.append(i)
    outs = [httpclient.InferRequestedOutput(t["name"], binary_data=False) for t in doc["outputs"]]
    res = c.infer(model.name, inputs, outputs=outs)
    want = {t["name"]: np.array(t["data"], KSERVE_TO_NP[t["datatype"]]).reshape(t["shape"]) for t in doc["outputs"]}
    diff = compare(model, {n: res.as_numpy(n) for n in want}, want)
    return f"{doc['inputs'][0]['shape'][0]} rows, max abs diff {diff:.2g}"


def shape_ok(model, shape, onnx_shape):
    """Metadata shapes: the ONNX shape with -1 for symbols; the batch dim may be left out."""
    full = [s if isinstance(s, int) else -1 for s in onnx_shape]
    shape = [int(s) for s in shape]
    return shape == full or (model.max_batch_size > 0 and shape == full[1:])


def check_tensor_metadata(model, got, want, what):
    expect(len(got) == len(want), f"{what}: {len(got)} tensors, expected {len(want)}")
    by_name = {t["name"]: t for t in got}
    for name, dt, shape in want:
        t = by_name.get(name)
        expect(t is not None, f"{what}: '{name}' missing")
        expect(t["datatype"] == dt, f"{what} '{name}': datatype {t['datatype']}, expected {dt}")
        expect(shape_ok(model, t["shape"], shape), f"{what} '{name}': shape {t['shape']}, ONNX says {shape}")


def check_model_metadata(model, md):
    expect(md.get("name") == model.name, f"name {md.get('name')!r}")
    if md.get("versions"):
        expect("1" in [str(v) for v in md["versions"]], f"versions {md['versions']} lack 1")
    check_tensor_metadata(model, md.get("inputs", []), model.inputs, "inputs")
    check_tensor_metadata(model, md.get("outputs", []), model.outputs, "outputs")
    return f"{len(md['inputs'])} inputs, {len(md['outputs'])} outputs"


def check_model_config(model, cfg):
    """The Triton model configuration perf_analyzer reads (HTTP JSON or gRPC as_json)."""
    expect(cfg.get("name") == model.name, f"name {cfg.get('name')!r}")
    mbs = int(cfg.get("max_batch_size", 0))
    expect(mbs == model.max_batch_size, f"max_batch_size {mbs}, config.toml says {model.max_batch_size}")
    for key, want in (("input", model.inputs), ("output", model.outputs)):
        got = {t["name"]: t for t in cfg.get(key, [])}
        for name, dt, shape in want:
            t = got.get(name)
            expect(t is not None, f"{key} '{name}' missing")
            expect(t.get("data_type") == "TYPE_" + dt, f"{key} '{name}': data_type {t.get('data_type')}")
            dims = [int(d) for d in t.get("dims", [])]
            expect(dims == model.dims(shape), f"{key} '{name}': dims {dims}, expected {model.dims(shape)}")
    return f"max_batch_size {mbs}"


def check_index(entries):
    names = {e.get("name"): e for e in entries}
    for m in MODELS:
        expect(m in names, f"'{m}' missing from the index ({sorted(n for n in names if n)})")
        state = names[m].get("state")
        expect(state in (None, "", "READY"), f"'{m}' state {state!r}")
    return f"{len(entries)} entries"


def check_stats(model, doc):
    stats = [s for s in doc.get("model_stats", []) if s.get("name") == model.name]
    expect(stats, f"no model_stats entry for '{model.name}'")
    success = sum(int(s.get("inference_stats", {}).get("success", {}).get("count", 0)) for s in stats)
    rows = sum(int(s.get("inference_count", 0)) for s in stats)
    expect(success >= model.ok_requests, f"success count {success} < {model.ok_requests} requests answered")
    expect(rows > 0, "inference_count is 0")
    return f"success {success}, inference_count {rows}"


def http_checks(ck, c, models):
    ck.run("http is_server_live", lambda: expect(c.is_server_live(), "not live"))
    ck.run("http is_server_ready", lambda: expect(c.is_server_ready(), "not ready"))

    def server_md():
        md = c.get_server_metadata()
        expect(md.get("name") and md.get("version"), f"metadata lacks name or version: {md}")
        return f"{md['name']} {md['version']}"

    ck.run("http get_server_metadata", server_md)
    ck.run("http get_model_repository_index", lambda: check_index(c.get_model_repository_index()))
    for m in models:
        ck.run(f"http is_model_ready {m}", lambda: expect(c.is_model_ready(m.name), "not ready"))
        ck.run(f"http is_model_ready {m} version 1", lambda: expect(c.is_model_ready(m.name, "1"), "not ready"))
        ck.run(f"http get_model_metadata {m}", lambda: check_model_metadata(m, c.get_model_metadata(m.name)))
        ck.run(f"http get_model_config {m}", lambda: check_model_config(m, c.get_model_config(m.name)))
        ck.run(f"http infer {m} json tensors", http_infer, c, m, 7, 101, False)
        ck.run(f"http infer {m} binary tensors", http_infer, c, m, m.max_batch_size or 16, 102, True, "1")
        ck.run(f"http infer {m} one row binary", http_infer, c, m, 1, 103, True)
        if os.path.exists(m.expected_path):
            ck.run(f"http infer {m} expected.json", http_golden, c, m)
    ck.run("http is_model_ready unknown model", lambda: expect(not c.is_model_ready("no_such_model"), "ready"))

    def unknown_infer():
        i = httpclient.InferInput("x", [1, 1], "FP32")
        i.set_data_from_numpy(np.zeros((1, 1), np.float32), binary_data=False)
        try:
            c.infer("no_such_model", [i])
        except InferenceServerException as e:
            expect(str(e.status()) in ("400", "404"), f"status {e.status()}, expected 400 or 404: {e}")
            return f"status {e.status()}"
        raise AssertionError("inference on an unknown model succeeded")

    ck.run("http infer unknown model fails", unknown_infer)
    for m in models:
        ck.run(f"http infer {m} system shared memory", shm_infer, c, httpclient, "http", m, 5, 104)
    for m in models:
        ck.run(f"http get_inference_statistics {m}", lambda: check_stats(m, c.get_inference_statistics(m.name)))


# --------------------------------------------------------------------- system shared memory

def shm_infer(c, client_mod, proto, model, rows, seed):
    """Inputs and outputs through system shared-memory regions (tritonclient.utils.shared_memory):
    registered, listed by the status call, used for one inference, unregistered."""
    feeds = model.batch(rows, seed)
    ref = model.reference(feeds)
    handles, names = [], []

    def region(tag, nbytes):
        name = f"{proto}-{model.name}-{tag}"
        key = f"/kiln-compat-{os.getpid()}-{name}"
        h = shm.create_shared_memory_region(name, key, nbytes)
        handles.append((h, name))
        c.register_system_shared_memory(name, key, nbytes)
        names.append(name)
        return h, name

    try:
        inputs = []
        for name, dt, _ in model.inputs:
            a = np.ascontiguousarray(feeds[name])
            h, rname = region(f"in-{name}", a.nbytes)
            shm.set_shared_memory_region(h, [a])
            i = client_mod.InferInput(name, list(a.shape), dt)
            i.set_shared_memory(rname, a.nbytes)
            inputs.append(i)
        outs, out_handles = [], {}
        for o in model.outputs:
            # twice the room the output needs: the server reports the size it wrote
            h, rname = region(f"out-{o[0]}", 2 * ref[o[0]].nbytes)
            r = client_mod.InferRequestedOutput(o[0])
            r.set_shared_memory(rname, 2 * ref[o[0]].nbytes)
            outs.append(r)
            out_handles[o[0]] = (h, rname)
        if proto == "http":
            listed = {r["name"] for r in c.get_system_shared_memory_status()}
        else:
            listed = set(c.get_system_shared_memory_status(as_json=True).get("regions", {}))
        expect(set(names) <= listed, f"status lists {sorted(listed)}, expected {sorted(names)}")
        res = c.infer(model.name, inputs, outputs=outs, request_id=f"{proto}-shm-{seed}")
        got = {}
        for o in model.outputs:
            meta = res.get_output(o[0])
            expect(meta is not None, f"output '{o[0]}' missing")
            if proto == "http":
                shape = meta["shape"]
                expect("data" not in meta and "parameters" not in meta,
                       f"output '{o[0]}' carries data as well as shared memory: {meta}")
            else:
                shape = list(meta.shape)
                raw = res.get_response().raw_output_contents
                idx = [t.name for t in res.get_response().outputs].index(o[0])
                expect(idx < len(raw) and len(raw[idx]) == 0,
                       f"output '{o[0]}' carries raw data as well as shared memory")
            got[o[0]] = shm.get_contents_as_numpy(out_handles[o[0]][0], ref[o[0]].dtype, shape)
        diff = compare(model, got, ref)
        c.unregister_system_shared_memory(names[0])
        try:
            c.infer(model.name, inputs, outputs=outs)
        except InferenceServerException as e:
            expect("unable to find" in str(e).lower(), f"unexpected error after unregistering: {e}")
        else:
            raise AssertionError("inference through an unregistered region succeeded")
        return f"{rows} rows, max abs diff {diff:.2g}"
    finally:
        c.unregister_system_shared_memory()
        for h, _ in handles:
            shm.destroy_shared_memory_region(h)


# ------------------------------------------------------------------------------------- gRPC

def grpc_inputs(model, feeds):
    out = []
    for name, dt, _ in model.inputs:
        i = grpcclient.InferInput(name, list(feeds[name].shape), dt)
        i.set_data_from_numpy(feeds[name])
        out.append(i)
    return out


def grpc_outputs(model):
    return [grpcclient.InferRequestedOutput(o[0]) for o in model.outputs]


def grpc_infer(c, model, rows, seed, version=""):
    feeds = model.batch(rows, seed)
    res = c.infer(model.name, grpc_inputs(model, feeds), model_version=version, outputs=grpc_outputs(model),
                  request_id=f"grpc-{seed}", client_timeout=TIMEOUT_S)
    got = {o[0]: res.as_numpy(o[0]) for o in model.outputs}
    diff = compare(model, got, model.reference(feeds))
    rid = res.get_response().id
    expect(rid == f"grpc-{seed}", f"response id {rid!r}, expected 'grpc-{seed}'")
    return f"{rows} rows, max abs diff {diff:.2g}"


def grpc_async_concurrent(c, model, n, seed):
    """n one-row requests in flight at once: the server may batch them, each must get its own row."""
    done = queue.Queue()
    feeds = [model.batch(1, seed + k) for k in range(n)]
    for k in range(n):
        c.async_infer(model.name, grpc_inputs(model, feeds[k]), lambda result, error, k=k: done.put((k, result, error)),
                      outputs=grpc_outputs(model), request_id=f"async-{k}", client_timeout=TIMEOUT_S)
    worst = 0.0
    for _ in range(n):
        k, res, err = done.get(timeout=TIMEOUT_S)
        expect(err is None, f"request {k}: {err}")
        expect(res.get_response().id == f"async-{k}", f"request {k}: response id {res.get_response().id!r}")
        got = {o[0]: res.as_numpy(o[0]) for o in model.outputs}
        worst = max(worst, compare(model, got, model.reference(feeds[k])))
    return f"{n} requests, max abs diff {worst:.2g}"


def grpc_stream(c, models, seed):
    """ModelStreamInfer: several requests (both models) on one stream, answers matched by id."""
    done = queue.Queue()
    c.start_stream(callback=lambda result, error: done.put((result, error)), stream_timeout=TIMEOUT_S)
    sent = {}
    try:
        for k, (m, rows) in enumerate([(models[0], 3), (models[-1], 2), (models[0], 1)]):
            feeds = m.batch(rows, seed + k)
            rid = f"stream-{k}"
            sent[rid] = (m, feeds)
            c.async_stream_infer(m.name, grpc_inputs(m, feeds), outputs=grpc_outputs(m), request_id=rid)
        worst = 0.0
        for _ in range(len(sent)):
            res, err = done.get(timeout=TIMEOUT_S)
            expect(err is None, f"stream error: {err}")
            rid = res.get_response().id
            expect(rid in sent, f"unexpected response id {rid!r}")
            m, feeds = sent.pop(rid)
            got = {o[0]: res.as_numpy(o[0]) for o in m.outputs}
            worst = max(worst, compare(m, got, m.reference(feeds)))
    finally:
        c.stop_stream(cancel_requests=True)
    return f"3 requests on one stream, max abs diff {worst:.2g}"


def grpc_checks(ck, c, models):
    ck.run("grpc is_server_live", lambda: expect(c.is_server_live(), "not live"))
    ck.run("grpc is_server_ready", lambda: expect(c.is_server_ready(), "not ready"))

    def server_md():
        md = c.get_server_metadata(as_json=True)
        expect(md.get("name") and md.get("version"), f"metadata lacks name or version: {md}")
        return f"{md['name']} {md['version']}"

    ck.run("grpc get_server_metadata", server_md)
    ck.run("grpc get_model_repository_index",
           lambda: check_index(c.get_model_repository_index(as_json=True).get("models", [])))
    for m in models:
        ck.run(f"grpc is_model_ready {m}", lambda: expect(c.is_model_ready(m.name), "not ready"))
        ck.run(f"grpc get_model_metadata {m}",
               lambda: check_model_metadata(m, c.get_model_metadata(m.name, as_json=True)))
        ck.run(f"grpc get_model_config {m}",
               lambda: check_model_config(m, c.get_model_config(m.name, as_json=True).get("config", {})))
        ck.run(f"grpc infer {m}", grpc_infer, c, m, 16, 201)
        ck.run(f"grpc infer {m} version 1", grpc_infer, c, m, m.max_batch_size or 16, 202, "1")
        ck.run(f"grpc async_infer {m} 8 concurrent", grpc_async_concurrent, c, m, 8, 300)
    ck.run("grpc start_stream + async_stream_infer", grpc_stream, c, models, 400)

    def unknown_ready():
        try:
            ready = c.is_model_ready("no_such_model")
        except InferenceServerException as e:
            expect(e.status() in GRPC_UNKNOWN_MODEL, f"status {e.status()}: {e}")
            return f"status {e.status()}"
        expect(not ready, "ready")

    ck.run("grpc is_model_ready unknown model", unknown_ready)

    def unknown_infer():
        i = grpcclient.InferInput("x", [1, 1], "FP32")
        i.set_data_from_numpy(np.zeros((1, 1), np.float32))
        try:
            c.infer("no_such_model", [i], client_timeout=TIMEOUT_S)
        except InferenceServerException as e:
            expect(e.status() in GRPC_UNKNOWN_MODEL, f"status {e.status()}: {e}")
            return f"status {e.status()}"
        raise AssertionError("inference on an unknown model succeeded")

    ck.run("grpc infer unknown model fails", unknown_infer)
    for m in models:
        ck.run(f"grpc infer {m} system shared memory", shm_infer, c, grpcclient, "grpc", m, 6, 203)
    for m in models:
        ck.run(f"grpc get_inference_statistics {m}",
               lambda: check_stats(m, c.get_inference_statistics(m.name, as_json=True)))


PIPELINE = "recommend"


def pipeline_checks(ck, http, grpc, models_dir):
    """The recommend pipeline through both clients, against its golden answers."""
    with open(os.path.join(models_dir, PIPELINE, "golden.json")) as f:
        golden = json.load(f)
    tol = golden["score_tolerance"]

    def check(outs, case):
        want = {o["name"]: o for o in case["outputs"]}
        ids = outs["item_ids"]
        expect(ids.dtype == np.int64 and list(ids.shape) == want["item_ids"]["shape"], f"ids {ids.dtype} {ids.shape}")
        expect(ids.tolist() == want["item_ids"]["data"], f"ids {ids.tolist()} != {want['item_ids']['data']}")
        d = np.abs(outs["scores"] - np.asarray(want["scores"]["data"], dtype=np.float32)).max()
        expect(d <= tol, f"scores differ by {d}")
        return d

    def feeds(case):
        return [(i["name"], i["datatype"], np.asarray(i["data"], dtype=KSERVE_TO_NP[i["datatype"]]).reshape(i["shape"]))
                for i in case["inputs"]]

    def over_http(binary):
        worst = 0.0
        for case in golden["cases"]:
            ins = []
            for name, dt, x in feeds(case):
                t = httpclient.InferInput(name, list(x.shape), dt)
                t.set_data_from_numpy(x, binary_data=binary)
                ins.append(t)
            outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("item_ids", "scores")]
            r = http.infer(PIPELINE, ins, outputs=outs)
            worst = max(worst, check({n: r.as_numpy(n) for n in ("item_ids", "scores")}, case))
        return f"{len(golden['cases'])} users, max score diff {worst:.1e}"

    def over_grpc():
        worst = 0.0
        for case in golden["cases"]:
            ins = []
            for name, dt, x in feeds(case):
                t = grpcclient.InferInput(name, list(x.shape), dt)
                t.set_data_from_numpy(x)
                ins.append(t)
            r = grpc.infer(PIPELINE, ins)
            worst = max(worst, check({n: r.as_numpy(n) for n in ("item_ids", "scores")}, case))
        return f"{len(golden['cases'])} users, max score diff {worst:.1e}"

    def config_http():
        c = http.get_model_config(PIPELINE)
        expect(c["platform"] == "ensemble", f"platform {c['platform']!r}")
        steps = c["ensemble_scheduling"]["step"]
        names = [s["model_name"] for s in steps]
        expect(names == ["user_tower", "coarse_rank", "fine_rank"], f"steps {names}")
        for s in steps:
            http.get_model_config(s["model_name"])  # what perf_analyzer fetches for each step
        return f"{len(steps)} model steps"

    def config_grpc():
        c = grpc.get_model_config(PIPELINE, as_json=True)["config"]
        expect(c["platform"] == "ensemble", f"platform {c['platform']!r}")
        steps = c["ensemble_scheduling"]["step"]
        expect([s["model_name"] for s in steps] == ["user_tower", "coarse_rank", "fine_rank"], f"steps {steps}")
        expect(http.get_model_metadata(PIPELINE)["platform"] == "ensemble", "metadata platform")

    def stats():
        st = http.get_inference_statistics(PIPELINE)["model_stats"][0]
        n = int(st["inference_stats"]["success"]["count"])
        expect(n >= 3 * len(golden["cases"]), f"success count {n}")
        return f"{n} successes"

    ck.run("pipeline: http json matches golden", over_http, False)
    ck.run("pipeline: http binary matches golden", over_http, True)
    ck.run("pipeline: grpc matches golden", over_grpc)
    ck.run("pipeline: config over http is an ensemble", config_http)
    ck.run("pipeline: config over grpc is an ensemble", config_grpc)
    ck.run("pipeline: statistics", stats)


def wait_ready(http, models, wait_s):
    """Waits until the server and every model answer ready over HTTP; False on time-out."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if http.is_server_ready() and all(http.is_model_ready(m) for m in models):
                return True
        except Exception:  # not listening yet
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--http", required=True, metavar="HOST:PORT")
    ap.add_argument("--grpc", required=True, metavar="HOST:PORT")
    ap.add_argument("--models", required=True, metavar="DIR", help="the model repository the server serves")
    ap.add_argument("--backend", choices=("onnxruntime", "tract"), default="onnxruntime",
                    help="the server's ONNX backend, for the BYTES checks (default onnxruntime)")
    ap.add_argument("--wait-s", type=float, default=60, help="how long to wait for readiness (default 60)")
    args = ap.parse_args()

    models = [Model(args.models, m) for m in MODELS]
    ck = Checks()
    http = httpclient.InferenceServerClient(url=args.http, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    grpc = grpcclient.InferenceServerClient(url=args.grpc)
    try:
        t0 = time.monotonic()
        ck.run("server and models ready", lambda: expect(wait_ready(http, MODELS + (PIPELINE, triton_extras.STRINGS),
                                                                    args.wait_s),
                                                         f"not ready within {args.wait_s:g} s over HTTP {args.http}")
               or f"{time.monotonic() - t0:.1f} s")
        if not ck.failed:  # nothing else can pass against a server that is not there
            http_checks(ck, http, models)
            grpc_checks(ck, grpc, models)
            pipeline_checks(ck, http, grpc, args.models)
            triton_extras.run(ck, http, grpc, models, args.models, args.backend)
    finally:
        http.close()
        grpc.close()
    print(f"{ck.passed} passed, {ck.failed} failed", flush=True)
    return 1 if ck.failed else 0


if __name__ == "__main__":
    sys.exit(main())
