"""Triton's extensions and wire behaviours, checked through tritonclient's own APIs.

Used by tritonclient_compat.py against a server in `--model-control-mode explicit` with every
model loaded (`--load-model=*`), over HTTP and gRPC:
  - request and response compression (HTTP gzip and deflate each way, gRPC gzip and deflate),
  - Triton's error texts for an unknown model, an unknown version and a non-numeric version,
  - the repository index (every model directory, each READY) and load / unload, with a JSON
    `config` override that the model's configuration must then show,
  - log settings and trace settings (global and per model), read and changed, then restored,
  - CUDA shared memory on a server without a GPU: an empty status, unregister as a no-op,
  - classification (`class_count`) on an output, against onnxruntime,
  - BYTES elements holding a NUL byte (round-trip on both backends) and non-UTF-8 bytes
    (round-trip on onnxruntime; refused with 400 / INVALID_ARGUMENT naming the input on tract).
Triton's raw binary request (`Inference-Header-Content-Length: 0`) is not covered here:
tritonclient has no call that sends one.
"""
import json
import os

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

STRINGS = "strings"  # BYTES in, the same BYTES out
ATOL = 1e-5


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def refused(fn, text, statuses):
    """Runs fn, which must raise an InferenceServerException whose message contains `text`
    and whose status is one of `statuses`; returns the status."""
    try:
        fn()
    except InferenceServerException as e:
        expect(str(e.status()) in statuses, f"status {e.status()}, expected one of {statuses}: {e}")
        expect(text in str(e), f"message {str(e)!r} lacks {text!r}")
        return f"status {e.status()}"
    raise AssertionError("the call succeeded")


def inputs(mod, model, feeds, **kw):
    out = []
    for name, dt, _ in model.inputs:
        i = mod.InferInput(name, list(feeds[name].shape), dt)
        i.set_data_from_numpy(feeds[name], **kw)
        out.append(i)
    return out


def close(model, got, want):
    worst = 0.0
    for name, ref in want.items():
        a = got[name]
        expect(a.shape == ref.shape and a.dtype == ref.dtype, f"{name}: {a.dtype} {a.shape}, expected {ref.dtype} {ref.shape}")
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - ref.astype(np.float64)))))
    expect(worst <= ATOL, f"max abs diff {worst:.3g} > {ATOL}")
    return f"max abs diff {worst:.2g}"


def repository_models(models_dir):
    return sorted(d for d in os.listdir(models_dir)
                  if any(os.path.exists(os.path.join(models_dir, d, f)) for f in ("config.toml", "config.pbtxt")))


# ------------------------------------------------------------------------------ compression

def http_compressed(c, model, req, resp):
    feeds = model.batch(5, 501)
    outs = [httpclient.InferRequestedOutput(o[0], binary_data=True) for o in model.outputs]
    res = c.infer(model.name, inputs(httpclient, model, feeds, binary_data=True), outputs=outs,
                  request_compression_algorithm=req, response_compression_algorithm=resp)
    return close(model, {o[0]: res.as_numpy(o[0]) for o in model.outputs}, model.reference(feeds))


def grpc_compressed(c, model, alg):
    feeds = model.batch(5, 502)
    res = c.infer(model.name, inputs(grpcclient, model, feeds), compression_algorithm=alg, client_timeout=60)
    return close(model, {o[0]: res.as_numpy(o[0]) for o in model.outputs}, model.reference(feeds))


# ------------------------------------------------------------------------------ error texts

def error_texts(ck, proto, c, mod, model, statuses):
    feeds = model.batch(1, 503)

    def infer(name, version):
        kw = {"client_timeout": 60} if proto == "grpc" else {}
        return lambda: c.infer(name, inputs(mod, model, feeds), model_version=version, **kw)

    ck.run(f"{proto} error text: unknown model",
           refused, infer("no_such_model", ""), "Request for unknown model: 'no_such_model' is not found", statuses)
    ck.run(f"{proto} error text: unknown version",
           refused, infer(model.name, "9"), f"Request for unknown model: '{model.name}' version 9 is not found",
           statuses)
    ck.run(f"{proto} error text: version not a number",
           refused, infer(model.name, "abc"), "failed to get model version from specified version string 'abc'",
           statuses)


# ------------------------------------------------------------------------------- repository

def check_full_index(entries, models_dir, unavailable=()):
    by_name = {e.get("name"): e for e in entries}
    want = repository_models(models_dir)
    expect(sorted(n for n in by_name if n) == want, f"index lists {sorted(by_name)}, repository holds {want}")
    for name in want:
        state = by_name[name].get("state")
        expected = "UNAVAILABLE" if name in unavailable else "READY"
        expect(state == expected, f"'{name}' state {state!r}, expected {expected}")
    return f"{len(want)} models"


def repository(proto, c, models_dir):
    """Load with a config override, unload, load again as the file says; the index follows."""
    if proto == "http":
        config = lambda: c.get_model_config(STRINGS)
        index = lambda: c.get_model_repository_index()
    else:
        config = lambda: c.get_model_config(STRINGS, as_json=True)["config"]
        index = lambda: c.get_model_repository_index(as_json=True).get("models", [])
    base = int(config()["max_batch_size"])
    override = 2 if base != 2 else 4
    c.load_model(STRINGS, config=json.dumps({"max_batch_size": override}))
    got = int(config()["max_batch_size"])
    expect(got == override, f"max_batch_size {got} after a load with config max_batch_size {override}")
    expect(c.is_model_ready(STRINGS), "not ready after the load with config")
    c.unload_model(STRINGS)
    expect(not c.is_model_ready(STRINGS), "ready after unload")
    check_full_index(index(), models_dir, unavailable=(STRINGS,))
    c.load_model(STRINGS)
    got = int(config()["max_batch_size"])
    expect(got == base, f"max_batch_size {got} after a load without config, the file says {base}")
    expect(c.is_model_ready(STRINGS), "not ready after the load")
    refused(lambda: c.load_model("no_such_model"),
            "failed to load 'no_such_model', failed to poll from model repository",
            ("400", "404", "500", "StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT", "StatusCode.INTERNAL"))
    return f"max_batch_size {base} -> {override} -> unloaded -> {base}"


# --------------------------------------------------------------------------- log and trace

def grpc_value(param):
    """The value of a gRPC LogSettings parameter as tritonclient's as_json gives it."""
    expect(len(param) == 1, f"parameter {param}")
    return next(iter(param.values()))


def log_settings(proto, c):
    if proto == "http":
        get = c.get_log_settings
        update = c.update_log_settings
        level = lambda s: int(s["log_verbose_level"])
    else:
        get = lambda: c.get_log_settings(as_json=True)["settings"]
        update = lambda s: c.update_log_settings(s, as_json=True)["settings"]
        level = lambda s: int(grpc_value(s["log_verbose_level"]))
    before = get()
    for key in ("log_info", "log_warning", "log_error", "log_verbose_level", "log_format"):
        expect(key in before, f"'{key}' missing from {before}")
    old = level(before)
    new = 0 if old else 1
    expect(level(update({"log_verbose_level": new})) == new, "the update answer keeps the old level")
    expect(level(get()) == new, "a read after the update shows the old level")
    update({"log_verbose_level": old})
    expect(level(get()) == old, "the level was not restored")
    return f"log_verbose_level {old} -> {new} -> {old}"


def trace_settings(proto, c, model):
    if proto == "http":
        get = lambda m=None: c.get_trace_settings(model_name=m)
        update = lambda s, m=None: c.update_trace_settings(model_name=m, settings=s)
        value = lambda s, k: s[k]
    else:
        get = lambda m=None: c.get_trace_settings(model_name=m, as_json=True)["settings"]
        update = lambda s, m=None: c.update_trace_settings(model_name=m, settings=s, as_json=True)["settings"]
        value = lambda s, k: s[k]["value"][0]
    before = get()
    for key in ("trace_level", "trace_rate", "trace_count", "log_frequency"):
        expect(key in before, f"'{key}' missing from {before}")
    rate = value(before, "trace_rate")
    expect(value(update({"trace_rate": "10"}), "trace_rate") == "10", "the update answer keeps the old rate")
    expect(value(get(), "trace_rate") == "10", "a read after the update shows the old rate")
    expect(value(get(model), "trace_rate") == "10", "the model does not follow the global rate")
    expect(value(update({"trace_count": "5"}, model), "trace_count") == "5", "the model's count was not set")
    expect(value(get(model), "trace_count") == "5", "a read shows the model's old count")
    expect(value(get(), "trace_count") != "5", "a model setting changed the global one")
    update({"trace_count": None}, model)  # back to the global setting
    expect(value(get(model), "trace_count") == value(get(), "trace_count"), "the model's count was not cleared")
    update({"trace_rate": rate})
    expect(value(get(), "trace_rate") == rate, "the rate was not restored")
    return f"trace_rate {rate} -> 10 -> {rate}; {model} trace_count 5, cleared"


# ------------------------------------------------------------------------------ CUDA shm

def cuda_shm(proto, c):
    if proto == "http":
        status = c.get_cuda_shared_memory_status()
        expect(status == [], f"status {status}")
    else:
        status = c.get_cuda_shared_memory_status(as_json=True)
        expect(not status.get("regions"), f"status {status}")
    c.unregister_cuda_shared_memory()
    c.unregister_cuda_shared_memory("no_such_region")
    return "empty status, unregister all and one"


# -------------------------------------------------------------------------- classification

def classification(proto, c, model, k=1):
    """`class_count` on the model's first output: per row the top k as `value:index`."""
    feeds = model.batch(4, 504)
    out = model.outputs[0][0]
    ref = model.reference(feeds)[out]
    if proto == "http":
        r = c.infer(model.name, inputs(httpclient, model, feeds, binary_data=False),
                    outputs=[httpclient.InferRequestedOutput(out, binary_data=False, class_count=k)])
    else:
        r = c.infer(model.name, inputs(grpcclient, model, feeds),
                    outputs=[grpcclient.InferRequestedOutput(out, class_count=k)], client_timeout=60)
    got = r.as_numpy(out)
    expect(got.shape == (ref.shape[0], k), f"shape {got.shape}, expected {(ref.shape[0], k)}")
    for row, want in zip(got, ref):
        order = np.argsort(-want, kind="stable")[:k]
        for entry, idx in zip(row, order):
            text = entry.decode() if isinstance(entry, bytes) else str(entry)
            value, index = text.split(":")[:2]
            expect(int(index) == idx, f"'{text}': index {index}, expected {idx}")
            expect(abs(float(value) - float(want[idx])) <= 1e-4, f"'{text}': value, expected {want[idx]}")
    return f"{ref.shape[0]} rows, top {k} of '{out}'"


# ----------------------------------------------------------------------------------- BYTES

def bytes_request(proto, c, data):
    arr = np.array(data, dtype=np.object_)
    if proto == "http":
        i = httpclient.InferInput("text", list(arr.shape), "BYTES")
        i.set_data_from_numpy(arr, binary_data=True)
        r = c.infer(STRINGS, [i], outputs=[httpclient.InferRequestedOutput("text_out", binary_data=True)])
    else:
        i = grpcclient.InferInput("text", list(arr.shape), "BYTES")
        i.set_data_from_numpy(arr)
        r = c.infer(STRINGS, [i], client_timeout=60)
    return r.as_numpy("text_out")


def bytes_roundtrip(proto, c, data):
    got = bytes_request(proto, c, data)
    want = np.array(data, dtype=np.object_)
    expect(got.shape == want.shape, f"shape {got.shape}, expected {want.shape}")
    expect(got.tolist() == want.tolist(), f"got {got.tolist()}, sent {want.tolist()}")
    return f"{want.size} elements"


NUL = [[b"a\x00b", b"\x00"], [b"kiln", b"tail\x00"]]
NOT_UTF8 = [[b"\xff\xfe", b"ok"], [b"caf\xe9", b"\xc3\x28"]]


def extras_checks(ck, proto, c, models, models_dir, backend):
    mod = httpclient if proto == "http" else grpcclient
    statuses = ("400", "404") if proto == "http" else ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")
    m = models[0]
    if proto == "http":
        for req, resp in (("gzip", "deflate"), ("deflate", "gzip"), ("gzip", None), (None, "deflate")):
            ck.run(f"http compression request {req} response {resp}", http_compressed, c, m, req, resp)
    else:
        for alg in ("gzip", "deflate"):
            ck.run(f"grpc compression {alg}", grpc_compressed, c, m, alg)
    error_texts(ck, proto, c, mod, m, statuses)
    if proto == "http":
        ck.run("http repository index lists every model", lambda: check_full_index(c.get_model_repository_index(),
                                                                                    models_dir))
    else:
        ck.run("grpc repository index lists every model",
               lambda: check_full_index(c.get_model_repository_index(as_json=True).get("models", []), models_dir))
    ck.run(f"{proto} log settings get and update", log_settings, proto, c)
    ck.run(f"{proto} trace settings get and update", trace_settings, proto, c, m.name)
    ck.run(f"{proto} cuda shared memory status and unregister", cuda_shm, proto, c)
    for model in models:
        ck.run(f"{proto} classification {model} class_count 1", classification, proto, c, model)
    ck.run(f"{proto} BYTES with NUL bytes round-trip ({backend})", bytes_roundtrip, proto, c, NUL)
    if backend == "tract":
        bad = ("400",) if proto == "http" else ("StatusCode.INVALID_ARGUMENT",)
        ck.run(f"{proto} BYTES non-UTF-8 refused ({backend})",
               refused, lambda: bytes_request(proto, c, NOT_UTF8), "'text'", bad)
    else:
        ck.run(f"{proto} BYTES non-UTF-8 round-trip ({backend})", bytes_roundtrip, proto, c, NOT_UTF8)
    ck.run(f"{proto} load with config override, unload, load", repository, proto, c, models_dir)


def run(ck, http, grpc, models, models_dir, backend):
    """Every check above over HTTP, then over gRPC."""
    expect(os.path.isdir(os.path.join(models_dir, STRINGS)), f"{models_dir} lacks the BYTES model '{STRINGS}'")
    extras_checks(ck, "http", http, models, models_dir, backend)
    extras_checks(ck, "grpc", grpc, models, models_dir, backend)
