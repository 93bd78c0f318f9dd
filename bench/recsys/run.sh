#!/usr/bin/env bash
# Recsys benchmark: the DLRM-style reference model (examples/gen_dlrm.py) in process, through
# `kiln serve` with perf_analyzer, next to the PyTorch / ONNX Runtime peer on the same weights,
# and embedding deltas applied while the server is loaded.
#
#   bench/recsys/run.sh [inproc] [peers] [serve] [deltas]      default: all four
#
# Env: ROWS (rows per table, default 1000000: 6.7 GB of tables, ~8 GB in Kiln's store),
#      MODELS_DIR (default ~/.cache/kiln-bench/r$ROWS; the model is generated there if missing),
#      THREADS (default 2), BATCHES (default "1 64 512 4096"; serve uses SERVE_BATCHES, default
#      "1 64 512"), CONC (perf_analyzer concurrency, default 2), ENGINES (peer engines, default
#      "eager bf16 ort"), LAYOUT (the tables' layout, "direct" (default: ids are row numbers,
#      as in the peers' dense arrays) or "hashed"; written into the model's config.toml),
#      OUT (default bench/out/recsys-DATE), KILN_PATHS (the in-process kernels, default
#      "gemm mkl_fp32 mkl_bf16"; also "avx512_bf16"), MKL_LIBRARY (default .venv/lib/libmkl_rt.so.3, from
#      scripts/setup-python.sh; kiln serve finds it itself, or takes KILN_MKL_LIBRARY).
# Results: $OUT/results.md; Kiln's own histograms in $OUT/server_side.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
ROWS=${ROWS:-1000000}
MODELS_DIR=${MODELS_DIR:-$HOME/.cache/kiln-bench/r$ROWS}
THREADS=${THREADS:-2}
BATCHES=${BATCHES:-1 64 512 4096}
SERVE_BATCHES=${SERVE_BATCHES:-1 64 512}
export CONC=${CONC:-2}
OUT=${OUT:-$ROOT/bench/out/recsys-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
HP=${HTTP_PORT:-18100} GP=${GRPC_PORT:-18101} MP=${METRICS_PORT:-18102}
KILN_PATHS=${KILN_PATHS:-gemm mkl_fp32 mkl_bf16}
MKL_LIBRARY=${MKL_LIBRARY:-$ROOT/.venv/lib/libmkl_rt.so.3}
what=${*:-inproc peers serve deltas}
mkdir -p "$OUT"
export RESULTS=$OUT/results.md
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
log "start $(uptime)"

if [ ! -f "$MODELS_DIR/dlrm/1/model.safetensors" ]; then
  log "generating the reference model, $ROWS rows per table"
  "$ROOT/.venv/bin/python" "$ROOT/examples/gen_dlrm.py" --out "$MODELS_DIR" --rows-per-table "$ROWS"
fi
WEIGHTS=$MODELS_DIR/dlrm/1/model.safetensors
LAYOUT=${LAYOUT:-direct}
log "table layout: $LAYOUT"
"$ROOT/.venv/bin/python" - "$MODELS_DIR/dlrm/config.toml" "$LAYOUT" <<'PY'
import sys
path, layout = sys.argv[1], sys.argv[2]
if layout not in ("direct", "hashed"):
    sys.exit(f"LAYOUT must be direct or hashed, got {layout!r}")
marker = "\n# table layout, set by bench/recsys/run.sh\n"
text = open(path).read().split(marker)[0]
text += marker + f'[parameters.table_defaults]\nlayout = "{layout}"\n'
open(path, "w").write(text)
PY
(cd "$ROOT" && cargo build --release -q -p kiln -p kiln-recsys --examples --bins)

if [[ " $what " == *" inproc "* ]]; then
  for path in $KILN_PATHS; do
    case $path in
      gemm) extra=() ;;
      mkl_fp32) extra=(--mkl-library "$MKL_LIBRARY" --precision fp32) ;;
      # --cpu-bf16: MKL's bf16 path also where auto would not pick it (AMD's AVX512_BF16)
      mkl_bf16) extra=(--mkl-library "$MKL_LIBRARY" --precision bf16 --cpu-bf16) ;;
      # Kiln's own AVX512_BF16 kernel (no MKL, so MKL's bf16 cannot be picked)
      avx512_bf16) extra=(--precision bf16) ;;
      *) echo "unknown KILN_PATHS entry $path" >&2; exit 1 ;;
    esac
    log "kiln in process, $path, load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$TARGET/examples/bench_model" "$MODELS_DIR/dlrm" --threads "$THREADS" \
      --batches "$(echo $BATCHES | tr ' ' ,)" "${extra[@]}" | tee -a "$RESULTS"
  done
fi

if [[ " $what " == *" peers "* ]]; then
  log "peers (PyTorch, ONNX Runtime) on the same weights"
  "$PEERS/recsys/recsys.sh" setup
  "$PEERS/recsys/recsys.sh" bench --weights "$WEIGHTS" --threads "$THREADS" \
    --engines "${ENGINES:-eager bf16 ort}" --batches "$BATCHES" | tee "$OUT/peers.txt"
fi

start_kiln() {
  rm -f "$OUT/ready.json"
  # SERVE_MKL: the library kiln serve uses ("off": the gemm crate); default MKL_LIBRARY
  KILN_MKL_LIBRARY=${SERVE_MKL:-$MKL_LIBRARY} \
  "$TARGET/kiln" serve --model-repository "$MODELS_DIR" --host 127.0.0.1 --http-port "$HP" \
    --grpc-port "$GP" --metrics-port "$MP" --ready-file "$OUT/ready.json" --log warn \
    >"$OUT/kiln.log" 2>&1 &
  kiln_pid=$!
  trap 'kill $kiln_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1200); do [ -s "$OUT/ready.json" ] && break; sleep 0.1; done
  [ -s "$OUT/ready.json" ] || { cat "$OUT/kiln.log"; exit 1; }
}

pa_data() { # perf_analyzer replicates one sample across a batch; 256 distinct samples, cycled
  "$ROOT/.venv/bin/python" - "$OUT/pa_data.json" "$ROWS" <<'PY'
import json, sys, numpy as np
out, rows = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(7)
data = []
for _ in range(256):
    d = {"dense": rng.standard_normal(13).astype(np.float32).round(5).tolist()}
    for i in range(26):
        d[f"sparse_{i}"] = rng.integers(0, rows, 20).tolist()
    data.append(d)
json.dump({"data": data}, open(out, "w"))
PY
}

measure() { # LABEL BATCH
  curl -s "127.0.0.1:$MP/metrics" >"$OUT/m_before.txt"
  PA_ARGS="--input-data $OUT/pa_data.json" PROTOS=${PROTOS:-grpc} "$PEERS/peers.sh" pa \
    "127.0.0.1:$HP" "127.0.0.1:$GP" dlrm "$1" "$2" >/dev/null || true
  curl -s "127.0.0.1:$MP/metrics" >"$OUT/m_after.txt"
  { echo "server-side, $1 batch $2 conc $CONC:"
    python3 "$ROOT/bench/serve/hist.py" "$OUT/m_before.txt" "$OUT/m_after.txt" dlrm; } | tee -a "$OUT/server_side.txt"
}

if [[ " $what " == *" serve "* || " $what " == *" deltas "* ]]; then
  pa_data
  start_kiln
  if [[ " $what " == *" serve "* ]]; then
    for b in $SERVE_BATCHES; do
      log "kiln serve, perf_analyzer batch $b"
      measure "kiln serve recsys" "$b"
    done
  fi
  if [[ " $what " == *" deltas "* ]]; then
    b=${DELTA_BATCH:-64}
    log "without deltas, batch $b"
    measure "kiln serve recsys, no deltas" "$b"
    log "with deltas, batch $b"
    "$TARGET/examples/delta_load" "http://127.0.0.1:$HP" dlrm "$ROWS" --seconds "${DELTA_SECONDS:-40}" \
      --rows-per-delta "${DELTA_ROWS:-1000}" --writers 2 | tee -a "$OUT/deltas.txt" &
    dl=$!
    sleep 1
    measure "kiln serve recsys, with deltas" "$b"
    wait "$dl"
    cat "$OUT/deltas.txt" >>"$RESULTS"
  fi
  kill -TERM "$kiln_pid"; wait "$kiln_pid" || true
  trap - EXIT
fi
log "end $(uptime)"
cat "$RESULTS"
