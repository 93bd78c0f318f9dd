#!/usr/bin/env bash
# Kiln serving the mlp example, measured with perf_analyzer next to the in-process onnxruntime
# limit and the peer servers (PyTriton, KServe, MLServer) on the same machine in the same run.
#
#   bench/serve/run.sh [kiln] [raw] [peers]      default: all three
#
# Env: SKIP_BUILD (use the binary already built), KILNS ("label=binary ..." serves and measures
# each binary in turn, e.g. a build before and after a change, instead of building), SERVER_CPUS /
# CLIENT_CPUS (taskset core lists for the server and the raw engine / for perf_analyzer; default
# 0 / 1, empty = unpinned), INSTANCES (kiln worker threads, default 1, one per server core), DELAY_US (max_queue_delay_us, default 0),
# BACKEND (kiln backend for the model, default tract), SERVER_FLAGS (extra `kiln serve` flags,
# e.g. --sched-batch), CONC / MI / TRIALS / BATCHES as in
# ../shared/peers/README.md. Results: bench/out/serve-DATE/results.md plus Kiln's server-side
# latency quantiles (from its own histograms) per protocol and batch size.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
PEERS_SH=${PEERS_SH:-$ROOT/../shared/peers/peers.sh}
OUT=${OUT:-$ROOT/bench/out/serve-$(date +%Y%m%d-%H%M%S)}
export RESULTS=$OUT/results.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HP=${HTTP_PORT:-18000} GP=${GRPC_PORT:-18001} MP=${METRICS_PORT:-18002}
MODEL_ONNX=$ROOT/examples/models/mlp/1/model.onnx
what=${*:-kiln raw peers}
SERVER_CPUS=${SERVER_CPUS-0} CLIENT_CPUS=${CLIENT_CPUS-1}
pin_server=() pin_client=()
[ -z "$SERVER_CPUS" ] || pin_server=(taskset -c "$SERVER_CPUS")
[ -z "$CLIENT_CPUS" ] || pin_client=(taskset -c "$CLIENT_CPUS")
mkdir -p "$OUT"

run_kiln() { # label binary
  local label=$1 bin=$2 repo=$OUT/models
  mkdir -p "$repo/mlp/1"
  cp "$MODEL_ONNX" "$repo/mlp/1/model.onnx"
  cat >"$repo/mlp/config.toml" <<TOML
backend = "${BACKEND:-tract}"
max_batch_size = 256
[[input]]
name = "x"
data_type = "FP32"
dims = [256]
[[output]]
name = "y"
data_type = "FP32"
dims = [1]
[dynamic_batching]
max_queue_delay_us = ${DELAY_US:-0}
max_queue_size = 4096
[instance_group]
count = ${INSTANCES:-1}
TOML
  rm -f "$OUT/ready.json"
  "${pin_server[@]}" "$bin" serve --model-repository "$repo" --host 127.0.0.1 \
    --http-port "$HP" --grpc-port "$GP" --metrics-port "$MP" --ready-file "$OUT/ready.json" \
    --log warn ${SERVER_FLAGS:-} >"$OUT/$label.log" 2>&1 &
  kiln_pid=$!
  trap 'kill $kiln_pid 2>/dev/null || true' EXIT
  for _ in $(seq 600); do [ -s "$OUT/ready.json" ] && break; sleep 0.1; done
  [ -s "$OUT/ready.json" ] || { cat "$OUT/$label.log"; exit 1; }
  for proto in http grpc; do
    for b in ${BATCHES:-1 64}; do
      curl -s "127.0.0.1:$MP/metrics" >"$OUT/m_before.txt"
      PROTOS=$proto "${pin_client[@]}" "$PEERS_SH" pa "127.0.0.1:$HP" "127.0.0.1:$GP" mlp "$label" "$b" >/dev/null || true
      curl -s "127.0.0.1:$MP/metrics" >"$OUT/m_after.txt"
      { echo "server-side, $label $proto batch $b (all concurrencies):"
        python3 "$ROOT/bench/serve/hist.py" "$OUT/m_before.txt" "$OUT/m_after.txt" mlp; } | tee -a "$OUT/server_side.txt"
    done
  done
  kill -TERM "$kiln_pid"; wait "$kiln_pid" || true
  trap - EXIT
}

if [[ " $what " == *" kiln "* ]]; then
  if [ -n "${KILNS:-}" ]; then
    for kv in $KILNS; do run_kiln "kiln-${kv%%=*}" "${kv#*=}"; done
  else
    [ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -p kiln)
    run_kiln "kiln-${BACKEND:-tract}" "$TARGET/release/kiln"
  fi
fi

if [[ " $what " == *" raw "* ]]; then
  THREADS=${THREADS:-1} "${pin_server[@]}" "$PEERS_SH" raw "$MODEL_ONNX" ${BATCHES:-1 64} | tee "$OUT/raw.txt"
fi

if [[ " $what " == *" peers "* ]]; then
  RESULTS=$OUT/peers.md "$PEERS_SH" compare "$MODEL_ONNX" | tail -40
  tail -n +3 "$OUT/peers.md" >>"$RESULTS"
fi

echo "== $RESULTS"
cat "$RESULTS"
