#!/usr/bin/env python3
"""perf_analyzer input data (`--input-data FILE`) drawn as the raw-engine script draws its inputs.

  pa_data.py MODEL.onnx ROWS > FILE.json

`../shared/peers/bench_ort.py` times onnxruntime on float inputs drawn from N(0, 1) and integer
inputs of 0 (INT_HIGH=1); perf_analyzer's default is random bytes, which as FP32 are NaN, infinite
or subnormal one time in 128 and of any magnitude up to 3e38, and cost the engine a few percent
more (crates/kiln-backend-ort/benches/engine_call.rs measures both). This writes ROWS steps, one
per row of a batch, so both sides compute on the same kind of data.
"""
import json
import sys

import numpy as np
import onnxruntime as ort

NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
      "tensor(int32)": np.int32}

model, rows = sys.argv[1], int(sys.argv[2])
inputs = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()
rng = np.random.default_rng(0)
steps = []
for _ in range(rows):
    step = {}
    for i in inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape[1:]]
        dt = NP[i.type]
        if np.issubdtype(dt, np.floating):
            v = rng.standard_normal(shape).astype(dt)
        else:
            v = np.zeros(shape, dtype=dt)
        step[i.name] = {"content": v.ravel().tolist(), "shape": shape}
    steps.append(step)
json.dump({"data": steps}, sys.stdout)
