#!/usr/bin/env python3
"""Reference FTRL-Proximal for kiln-learn's golden test (tests/ftrl_golden.rs).

A textbook implementation of McMahan et al. 2013, Algorithm 1 (per-coordinate learning rates,
L1 and L2), written independently of the Rust code, in NumPy float64. It generates a
deterministic stream and writes the stream, the per-sample predictions (each taken before the
sample is learned) and the final weights to tests/data/ftrl_golden.bin.

Regenerate (from the repository root, with the project's venv, see scripts/setup-python.sh):

    .venv/bin/python crates/kiln-learn/scripts/ftrl_ref.py

The stream: 2000 samples over a vocabulary of 300 random u64 keys. Each sample draws 40 key
occurrences (with replacement, Zipf-like popularity, so a key may occur more than once: its
feature value x is then its count, as sum pooling gives). Labels come from a planted logistic
model. A bias coordinate (x = 1 in every sample) is learned by FTRL like any other.

File format (little-endian):
    8   magic b"FTRLGLD1"
    32  alpha, beta, l1, l2 (f64)
    4   K: keys (u32)
    4   S: samples (u32)
    8K  keys (u64)
    per sample: label (u8), m: occurrences (u16), m x key index (u16)
    8S  predictions, before learning the sample (f64)
    8K  final weight of each key (f64)
    8   final bias weight (f64)
"""
import os
import struct

import numpy as np

ALPHA, BETA, L1, L2 = 0.05, 1.0, 0.5, 1.0
KEYS, SAMPLES, PER_SAMPLE, SEED = 300, 2000, 40, 20261206


def ftrl_weight(z, n):
    """w from the accumulators, elementwise (Algorithm 1, the closed form of the FTRL step)."""
    w = -(z - np.sign(z) * L1) / ((BETA + np.sqrt(n)) / ALPHA + L2)
    return np.where(np.abs(z) <= L1, 0.0, w)


def main():
    rng = np.random.default_rng(SEED)
    keys = rng.integers(0, 2**64, size=KEYS, dtype=np.uint64)
    popularity = 1.0 / np.arange(1, KEYS + 1) ** 0.8
    popularity /= popularity.sum()
    planted = rng.normal(0.0, 0.6, size=KEYS)
    planted_bias = -0.4

    # coordinates 0..KEYS-1 are the keys, coordinate KEYS is the bias
    z = np.zeros(KEYS + 1)
    n = np.zeros(KEYS + 1)
    stream, preds = [], []
    for _ in range(SAMPLES):
        occ = rng.choice(KEYS, size=PER_SAMPLE, p=popularity)
        x = np.zeros(KEYS + 1)
        np.add.at(x, occ, 1.0)
        x[KEYS] = 1.0
        true_logit = planted_bias + 0.25 * (planted @ x[:KEYS])
        label = int(rng.random() < 1.0 / (1.0 + np.exp(-true_logit)))

        active = np.nonzero(x)[0]
        xa = x[active]
        w = ftrl_weight(z[active], n[active])
        p = 1.0 / (1.0 + np.exp(-(w @ xa)))
        preds.append(p)
        g = (p - label) * xa
        sigma = (np.sqrt(n[active] + g * g) - np.sqrt(n[active])) / ALPHA
        z[active] += g - sigma * w
        n[active] += g * g
        stream.append((label, occ))

    final = ftrl_weight(z, n)
    out = bytearray(b"FTRLGLD1")
    out += struct.pack("<4d", ALPHA, BETA, L1, L2)
    out += struct.pack("<II", KEYS, SAMPLES)
    out += keys.astype("<u8").tobytes()
    for label, occ in stream:
        out += struct.pack("<BH", label, len(occ))
        out += occ.astype("<u2").tobytes()
    out += np.asarray(preds, dtype="<f8").tobytes()
    out += final[:KEYS].astype("<f8").tobytes()
    out += struct.pack("<d", final[KEYS])

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "ftrl_golden.bin")
    with open(path, "wb") as f:
        f.write(out)
    zeros = int(np.sum(final[:KEYS] == 0.0))
    positives = sum(label for label, _ in stream)
    print(f"wrote {os.path.normpath(path)}: {len(out)} bytes, {SAMPLES} samples "
          f"({positives} positive), {zeros}/{KEYS} weights exactly 0, bias {final[KEYS]:.6f}")


if __name__ == "__main__":
    main()
