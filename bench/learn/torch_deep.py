#!/usr/bin/env python3
"""PyTorch CPU training of a DLRM-style recsys model, the peer of kiln-learn's DeepTrainer bench
(crates/kiln-learn/benches/deep.rs): the same model read from the same weights file, the same
batch size, loss and optimizers.

    torch_deep.py --weights examples/models/dlrm_small/1/model.safetensors [--batch 256]
                  [--threads 1] [--seconds 3] [--runs 5] [--ids 4]

Model (from the file's tensors, serving's layout): bottom.{j} Linear layers with ReLU after every
one, one nn.EmbeddingBag(mode="sum", sparse=True) per `<table>.weight`, concat
[bottom_out, pooled_0, ...], top.{j} with ReLU between layers; loss BCEWithLogitsLoss (mean over
the batch); torch.optim.Adam(lr 1e-3) on the MLPs, torch.optim.Adagrad(lr 1e-2) on the sparse
embedding gradients. Inputs: 64 batches drawn once (ids uniform in [0, rows), --ids per feature,
dense N(0, 1), labels Bernoulli(1/2)), cycled, as the Rust bench does.

Prints one JSON line: {"engine": "pytorch", "samples_per_s": median over --runs, "runs": [...],
"threads": T, "batch": B, "torch": version}. Runs in the recsys peer's venv
(../shared/peers/recsys/recsys.sh setup: torch 2.15.0, safetensors 0.8.0).
"""

import argparse
import json
import statistics
import time

import torch
from safetensors.torch import load_file


def build(path):
    st = load_file(path)
    nn = torch.nn

    def mlp(prefix):
        layers, j = [], 0
        while f"{prefix}.{j}.weight" in st:
            w, b = st[f"{prefix}.{j}.weight"].clone(), st[f"{prefix}.{j}.bias"].clone()
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(b)
            layers.append(lin)
            j += 1
        return nn.ModuleList(layers)

    tables = sorted((n[: -len(".weight")] for n in st if n.endswith(".weight")
                     and not n.startswith(("bottom.", "top."))), key=lambda n: int(n.rsplit(".", 1)[1]))
    embs = nn.ModuleList()
    for t in tables:
        w = st[f"{t}.weight"]
        e = nn.EmbeddingBag(w.shape[0], w.shape[1], mode="sum", sparse=True)
        e.weight.data.copy_(w)
        embs.append(e)

    class DLRM(nn.Module):
        def __init__(self):
            super().__init__()
            self.bottom, self.top, self.emb = mlp("bottom"), mlp("top"), embs

        def forward(self, dense, sparse):
            x = dense
            for lin in self.bottom:
                x = torch.relu(lin(x))
            z = torch.cat([x] + [e(s) for e, s in zip(self.emb, sparse)], dim=1)
            for j, lin in enumerate(self.top):
                z = lin(z)
                if j < len(self.top) - 1:
                    z = torch.relu(z)
            return z.squeeze(1)

    return DLRM()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ids", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build(a.weights)
    dense_params = list(model.bottom.parameters()) + list(model.top.parameters())
    adam = torch.optim.Adam(dense_params, lr=1e-3)
    adagrad = torch.optim.Adagrad(model.emb.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(1)
    d_in = model.bottom[0].in_features
    batches = []
    for _ in range(64):
        dense = torch.randn(a.batch, d_in, generator=g)
        sparse = [torch.randint(0, e.num_embeddings, (a.batch, a.ids), generator=g) for e in model.emb]
        labels = (torch.rand(a.batch, generator=g) < 0.5).float()
        batches.append((dense, sparse, labels))

    def step(i):
        dense, sparse, labels = batches[i % len(batches)]
        adam.zero_grad(set_to_none=True)
        adagrad.zero_grad(set_to_none=True)
        loss = loss_fn(model(dense, sparse), labels)
        loss.backward()
        adam.step()
        adagrad.step()

    for i in range(50):  # warm-up
        step(i)
    runs, i = [], 0
    for _ in range(a.runs):
        n, t0 = 0, time.perf_counter()
        while True:
            step(i)
            i += 1
            n += 1
            el = time.perf_counter() - t0
            if el >= a.seconds:
                break
        runs.append(n * a.batch / el)
    print(json.dumps({"engine": "pytorch", "samples_per_s": statistics.median(runs),
                      "runs": [round(r) for r in runs], "threads": a.threads, "batch": a.batch,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
