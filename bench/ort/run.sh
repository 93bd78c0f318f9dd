#!/usr/bin/env bash
# Kiln on the ONNX Runtime backend and on tract, driven by perf_analyzer, next to the raw
# in-process onnxruntime engine, on the mlp and ranker examples; same machine, same run.
#
#   bench/ort/run.sh [raw] [kiln]          default: both
#
# Env:
#   MODELS    example models (default "mlp ranker")
#   BACKENDS  Kiln backends (default "onnxruntime tract")
#   INSTANCES instance_group.count (default 1)
#   THREADS   instance_group.threads, i.e. ONNX Runtime intra-op threads; also the raw engine's
#             intra-op threads (default 1, the one server core; tract ignores it)
#   MAX_BATCH max_batch_size (default 64, as the examples); DELAY_US max_queue_delay_us (default 0)
#   SPIN      onnxruntime models' parameters.allow_spinning (default true, the ORT default)
#   PA_DATA   what perf_analyzer sends: normal (default; floats N(0, 1) and ids 0, as the raw
#             engine's inputs, from bench/ort/pa_data.py run by PEERS_PY, default the peers' tools
#             venv) or random (perf_analyzer's random bytes, zeros for the ranker: before 2026-12-06)
#   CONC / MI / TRIALS / BATCHES / PROTOS as in ../shared/peers/README.md (CONC default 8)
#   SHM=1     tensors through system shared memory (kiln serve --allow-client-shm,
#             perf_analyzer --shared-memory system); rows are labelled kiln-BACKEND-shm
#   SKIP_BUILD use the kiln binary already built; KILN a binary to use instead of target/release/kiln
#   SERVER_FLAGS extra `kiln serve` flags (e.g. --sched-batch)
#   SERVER_CPUS / CLIENT_CPUS  cores (taskset lists) for the server and the raw engine / for
#             perf_analyzer (default 0 / 1, so neither measures the other's load; empty = unpinned).
#             Give THREADS no more threads than SERVER_CPUS has cores.
# Results: $OUT/results.md (default bench/out/ort-DATE), Kiln's server-side latency quantiles from
# its own histograms in $OUT/server_side.txt, CPU per request of the server and of perf_analyzer
# (with the ceiling they leave; bench/ort/cpu.py) and of each server thread, with the times it was
# preempted (bench/ort/threads.py), in $OUT/cpu.txt, the load average before and
# after in $OUT/load.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
PEERS_SH=${PEERS_SH:-$ROOT/../shared/peers/peers.sh}
OUT=${OUT:-$ROOT/bench/out/ort-$(date +%Y%m%d-%H%M%S)}
export RESULTS=$OUT/results.md CONC=${CONC:-8}
KILN=${KILN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln}
HP=${HTTP_PORT:-18000} GP=${GRPC_PORT:-18001} MP=${METRICS_PORT:-18002}
THREADS=${THREADS:-1}
SERVER_CPUS=${SERVER_CPUS-0} CLIENT_CPUS=${CLIENT_CPUS-1}
pin_server=() pin_client=()
[ -z "$SERVER_CPUS" ] || pin_server=(taskset -c "$SERVER_CPUS")
[ -z "$CLIENT_CPUS" ] || pin_client=(taskset -c "$CLIENT_CPUS")
what=${*:-raw kiln}
mkdir -p "$OUT"
echo "start: $(uptime); server cpus '${SERVER_CPUS}', client cpus '${CLIENT_CPUS}', threads $THREADS" >>"$OUT/load.txt"

pa_args() { # the data perf_analyzer sends (PA_DATA)
  local a=""
  if [ "${PA_DATA:-normal}" = normal ]; then
    a="--input-data $OUT/data-$1.json"
  else # its own random bytes; the ranker's ids are indices
    case $1 in ranker) a="--input-data zero" ;; esac
  fi
  [ -z "${SHM:-}" ] || a="$a --shared-memory system"
  echo "$a"
}
kiln_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

if [[ " $what " == *" raw "* ]]; then
  for m in ${MODELS:-mlp ranker}; do
    THREADS=$THREADS "${pin_server[@]}" "$PEERS_SH" raw --results "$RESULTS" --label "raw onnxruntime $m (intra_op $THREADS)" \
      "$ROOT/examples/models/$m/1/model.onnx" ${BATCHES:-1 64} | tee -a "$OUT/raw.txt"
  done
fi

if [[ " $what " == *" kiln "* ]]; then
  [ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -p kiln)
  if [ "${PA_DATA:-normal}" = normal ]; then
    for m in ${MODELS:-mlp ranker}; do
      "${PEERS_PY:-${PEERS_HOME:-$HOME/.cache/kiln-peers}/venv/tools/bin/python}" "$ROOT/bench/ort/pa_data.py" \
        "$ROOT/examples/models/$m/1/model.onnx" "${MAX_BATCH:-64}" >"$OUT/data-$m.json"
    done
  fi
  for backend in ${BACKENDS:-onnxruntime tract}; do
    repo=$OUT/models-$backend
    for m in ${MODELS:-mlp ranker}; do
      mkdir -p "$repo/$m/1"
      cp "$ROOT/examples/models/$m/1/model.onnx" "$repo/$m/1/model.onnx"
      cat >"$repo/$m/config.toml" <<TOML
backend = "$backend"
max_batch_size = ${MAX_BATCH:-64}
[dynamic_batching]
max_queue_delay_us = ${DELAY_US:-0}
max_queue_size = 4096
[instance_group]
count = ${INSTANCES:-1}
threads = $THREADS
TOML
      if [ "$backend" = onnxruntime ]; then
        printf '[parameters]\nallow_spinning = %s\n' "${SPIN:-true}" >>"$repo/$m/config.toml"
      fi
    done
    rm -f "$OUT/ready.json"
    "${pin_server[@]}" "$KILN" serve --model-repository "$repo" --host 127.0.0.1 --http-port "$HP" --grpc-port "$GP" \
      --metrics-port "$MP" --ready-file "$OUT/ready.json" --log warn ${SHM:+--allow-client-shm} ${SERVER_FLAGS:-} \
      >"$OUT/kiln-$backend.log" 2>&1 &
    kiln_pid=$!
    trap 'kill $kiln_pid 2>/dev/null || true' EXIT
    for _ in $(seq 600); do [ -s "$OUT/ready.json" ] && break; sleep 0.1; done
    [ -s "$OUT/ready.json" ] || { cat "$OUT/kiln-$backend.log"; exit 1; }
    for m in ${MODELS:-mlp ranker}; do
      label="kiln-$backend${SHM:+-shm} $m"
      for proto in ${PROTOS:-http grpc}; do
        for b in ${BATCHES:-1 64}; do
          curl -s "127.0.0.1:$MP/metrics" >"$OUT/m_before.txt"
          python3 "$ROOT/bench/ort/threads.py" snap "$kiln_pid" >"$OUT/t_before.txt"
          t0=$(kiln_ticks "$kiln_pid")
          PA_ARGS=$(pa_args "$m") PROTOS=$proto /usr/bin/time -f "%U %S" -o "$OUT/client_cpu.txt" \
            "${pin_client[@]}" "$PEERS_SH" pa "127.0.0.1:$HP" "127.0.0.1:$GP" "$m" "$label" "$b" >/dev/null || true
          t1=$(kiln_ticks "$kiln_pid")
          python3 "$ROOT/bench/ort/threads.py" snap "$kiln_pid" >"$OUT/t_after.txt"
          curl -s "127.0.0.1:$MP/metrics" >"$OUT/m_after.txt"
          { echo "server-side, $label $proto batch $b conc $CONC:"
            python3 "$ROOT/bench/serve/hist.py" "$OUT/m_before.txt" "$OUT/m_after.txt" "$m"; } | tee -a "$OUT/server_side.txt"
          { echo "cpu, $label $proto batch $b conc $CONC:"
            python3 "$ROOT/bench/ort/cpu.py" "$OUT/m_before.txt" "$OUT/m_after.txt" "$m" "$((t1 - t0))" \
              "$(tail -1 "$OUT/client_cpu.txt" | awk '{print $1 + $2}')" "$(nproc)"
            python3 "$ROOT/bench/ort/threads.py" diff "$OUT/t_before.txt" "$OUT/t_after.txt" \
              "$OUT/m_before.txt" "$OUT/m_after.txt" "$m"; } | tee -a "$OUT/cpu.txt"
        done
      done
    done
    kill -TERM "$kiln_pid"; wait "$kiln_pid" || true
    trap - EXIT
  done
fi

echo "end: $(uptime)" >>"$OUT/load.txt"
echo "== $RESULTS"
cat "$RESULTS"
cat "$OUT/load.txt"
