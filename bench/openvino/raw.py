"""The raw engines in process, for bench/openvino/run.sh: OpenVINO's and ONNX Runtime's Python
APIs on the example models, same threads, batch 1 and 64; the engines take turns in 1 s windows
(0.5 s warm-up each first) and rows/s is the median of ROUNDS windows.

    THREADS=1 .venv/bin/python bench/openvino/raw.py examples/models

With --repo SRC REPO THREADS DATA it writes instead the serving repository of run.sh (mlp and
ranker on each of openvino, onnxruntime and tract, max_batch_size 64, no queue delay, THREADS
threads) and perf_analyzer's input data (DATA/<model>.json: one valid row).
"""
import json
import os
import pathlib
import shutil
import statistics
import sys
import time

import numpy as np

MODELS = ("mlp", "ranker")
BACKENDS = ("openvino", "onnxruntime", "tract")


def inputs(session_inputs, rows, rng):
    out = {}
    for name, dims, dtype in session_inputs:
        shape = [rows] + [d for d in dims[1:]]
        if dtype == "int64":
            out[name] = rng.integers(0, 1000, shape, dtype=np.int64)
        else:
            out[name] = (rng.random(shape, dtype=np.float32) * 4 - 2).astype(np.float32)
    return out


def engines(path, threads):
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(path, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    ov_inputs = [(i.get_any_name(), list(i.get_partial_shape().get_min_shape()),
                  str(i.get_element_type().to_dtype())) for i in compiled.inputs]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run_ov(x):
        request.infer(x)
        return request.get_output_tensor(0).data

    def run_ort(x):
        return sess.run(None, x)[0]

    return ov_inputs, [("openvino", run_ov), ("onnxruntime", run_ort)]


def window(run, x, seconds):
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        run(x)
        n += 1
    return n, time.perf_counter() - t0


def bench(models_dir):
    threads = int(os.environ.get("THREADS", "1"))
    rounds = int(os.environ.get("ROUNDS", "5"))
    rng = np.random.default_rng(42)
    print(f"threads {threads}, {rounds} rounds of 1 s per engine, median rows/s")
    print(f"{'model':<8} {'batch':>6} {'engine':<12} {'rows/s':>12} {'us/call':>10} {'vs ort':>9}")
    for model in MODELS:
        ov_inputs, runs = engines(str(pathlib.Path(models_dir) / model / "1/model.onnx"), threads)
        for batch in (1, 64):
            x = inputs(ov_inputs, batch, rng)
            a, b = runs[0][1](x), runs[1][1](x)
            assert np.allclose(a, b, atol=1e-4), f"{model}: engines disagree"
            for _, run in runs:
                window(run, x, 0.5)
            rates = {name: [] for name, _ in runs}
            for _ in range(rounds):
                for name, run in runs:
                    n, dt = window(run, x, 1.0)
                    rates[name].append(n * batch / dt)
            med = {k: statistics.median(v) for k, v in rates.items()}
            for name, rate in med.items():
                print(f"{model:<8} {batch:>6} {name:<12} {rate:>12.0f} {1e6 * batch / rate:>10.1f} "
                      f"{rate / med['onnxruntime']:>8.2f}x")


def repo(src, dst, threads, data):
    src, dst, data = pathlib.Path(src), pathlib.Path(dst), pathlib.Path(data)
    shutil.rmtree(dst, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        for backend in BACKENDS:
            d = dst / f"{model}_{backend}"
            (d / "1").mkdir(parents=True)
            shutil.copy(src / model / "1/model.onnx", d / "1/model.onnx")
            (d / "config.toml").write_text(
                f'backend = "{backend}"\nmax_batch_size = 64\n\n[dynamic_batching]\n'
                f"max_queue_delay_us = 0\n\n[instance_group]\ncount = 1\nthreads = {threads}\n")
    rng = np.random.default_rng(7)
    rows = {
        "mlp": {"x": (rng.random(256) * 4 - 2).round(4).tolist()},
        "ranker": {"ids": rng.integers(0, 1000, 8).tolist(),
                   "dense": (rng.random(13) * 4 - 2).round(4).tolist()},
    }
    for model, row in rows.items():
        (data / f"{model}.json").write_text(json.dumps({"data": [row]}))


if __name__ == "__main__":
    if sys.argv[1] == "--repo":
        repo(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        bench(sys.argv[1])
