#!/usr/bin/env bash
# OpenVINO against ONNX Runtime and tract on the `mlp` and `ranker` examples, measured on this
# machine in one run (issue 16, part 2, "Benchmarks"):
#   1. in process, through each backend's Kiln interface (crates/kiln-backend-openvino/benches/
#      engines.rs: the backends take turns in 1 s windows, median rows/s, same threads);
#   2. in process, the raw engines' Python APIs (raw.py: openvino and onnxruntime, same threads,
#      same turns), which separates an engine's speed from Kiln's layer over it;
#   3. through `kiln serve` with perf_analyzer (gRPC, batch 1 and 64, concurrency 1), one server
#      holding the six models (model x backend), server and client pinned to different cores.
# Rows/s at batch 1 and 64; ratios against onnxruntime in the same run.
#
#   bench/openvino/run.sh
#
# Env: SKIP_BUILD (use the binary and bench already built), KILN (binary; default
# $CARGO_TARGET_DIR/release/kiln), OUT (default bench/out/openvino-DATE), SERVER_CPUS / CLIENT_CPUS
# (taskset core lists, default 0 / 1), THREADS (engine threads, default 1), MI (perf_analyzer
# window ms, default 2000), TRIALS (default 6), STAB (stability %, default 20), HTTP_PORT /
# GRPC_PORT (default 18400-18401), PY / PA (python with openvino, onnxruntime, numpy /
# perf_analyzer; default .venv). Results: $OUT/results.md, with the machine in $OUT/machine.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
HERE=$ROOT/bench/openvino
OUT=${OUT:-$ROOT/bench/out/openvino-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
KILN=${KILN:-$TARGET/release/kiln}
PY=${PY:-$ROOT/.venv/bin/python}
PA=${PA:-$ROOT/.venv/bin/perf_analyzer}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/kiln-peers}
HP=${HTTP_PORT:-18400} GP=${GRPC_PORT:-18401}
MI=${MI:-2000} TRIALS=${TRIALS:-6} STAB=${STAB:-20} THREADS=${THREADS:-1}
SERVER_CPUS=${SERVER_CPUS-0} CLIENT_CPUS=${CLIENT_CPUS-1}
pin_server=() pin_client=()
[ -z "$SERVER_CPUS" ] || pin_server=(taskset -c "$SERVER_CPUS")
[ -z "$CLIENT_CPUS" ] || pin_client=(taskset -c "$CLIENT_CPUS")
mkdir -p "$OUT/logs"
RES=$OUT/results.md

# perf_analyzer 2.51 links libb64.so.0d and libcudart.so.12 (see ../shared/peers/peers.sh setup)
for d in "$PEERS_HOME"/lib/usr/lib/*-linux-gnu "$PEERS_HOME"/venv/pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib \
  "$ROOT"/.venv/lib/python3*/site-packages/nvidia/cuda_runtime/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
load() { cut -d' ' -f1-3 /proc/loadavg; }

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)"
  echo "server cores: ${SERVER_CPUS:-all}; client cores: ${CLIENT_CPUS:-all}; engine threads: $THREADS"
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Flags|L2|L3)'
  echo "load average at start: $(load)"
} >"$OUT/machine.txt"

if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release -p kiln && cargo bench --no-run -p kiln-backend-openvino --bench engines)
fi
cp "$KILN" "$OUT/kiln"
KILN=$OUT/kiln

{
  echo "# OpenVINO against ONNX Runtime and tract ($(date -u +%F))"
  echo
  echo '```'
  cat "$OUT/machine.txt"
  echo '```'
} >"$RES"

# 1. Kiln backends in process (pinned to the server's cores)
echo "## In process, through Kiln's backends" >>"$RES"
echo "load before: $(load)" >>"$RES"
echo '```' >>"$RES"
(cd "$ROOT" && THREADS=$THREADS "${pin_server[@]}" cargo bench -q -p kiln-backend-openvino --bench engines 2>/dev/null) | tee -a "$RES"
echo '```' >>"$RES"
echo "load after: $(load)" >>"$RES"

# 2. raw engines in process
echo "## In process, the raw engines (Python APIs)" >>"$RES"
echo "load before: $(load)" >>"$RES"
echo '```' >>"$RES"
THREADS=$THREADS "${pin_server[@]}" "$PY" "$HERE/raw.py" "$ROOT/examples/models" | tee -a "$RES"
echo '```' >>"$RES"
echo "load after: $(load)" >>"$RES"

# 3. kiln serve + perf_analyzer
REPO=$OUT/repo
"$PY" "$HERE/raw.py" --repo "$ROOT/examples/models" "$REPO" "$THREADS" "$OUT/data"
rm -f "$OUT/ready.json"
"${pin_server[@]}" "$KILN" serve --model-repository "$REPO" --host 127.0.0.1 --http-port "$HP" --grpc-port "$GP" \
  --no-metrics --ready-file "$OUT/ready.json" --log warn >"$OUT/logs/kiln.log" 2>&1 &
kiln_pid=$!
trap 'kill $kiln_pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$OUT/ready.json" ] && break; sleep 0.1; done
[ -s "$OUT/ready.json" ] || { cat "$OUT/logs/kiln.log"; exit 1; }

echo "## Through kiln serve (perf_analyzer, gRPC, concurrency 1)" >>"$RES"
echo '```' >>"$RES"
printf '%-8s %6s %-12s %12s %9s %9s %9s  %s\n' model batch backend rows/s p50_us p99_us "vs ort" "load before -> after" >>"$RES"
for model in mlp ranker; do
  for b in 1 64; do
    lines=()
    for backend in openvino onnxruntime tract; do
      name=${model}_$backend csv=$OUT/logs/pa-$model-$b-$backend.csv
      l0=$(load)
      for stab in "$STAB" 50; do # no stable window within TRIALS: once more with a looser threshold
        "${pin_client[@]}" "$PA" -m "$name" -u "127.0.0.1:$GP" -i grpc -b "$b" --input-data "$OUT/data/$model.json" \
          --concurrency-range 1:1 -p "$MI" --max-trials "$TRIALS" -s "$stab" -f "$csv" \
          >>"$OUT/logs/pa-$model-$b-$backend.log" 2>&1 && break
      done
      lines+=("$backend $csv $l0 -> $(load)")
    done
    "$PY" - "$model" "$b" "${lines[@]}" <<'PY' | tee -a "$RES"
import csv, os, sys
model, b, *lines = sys.argv[1:]
rows = {}
for line in lines:
    backend, path, load = line.split(" ", 2)
    r = next(iter(csv.DictReader(open(path))), None) if os.path.exists(path) else None
    rows[backend] = (r, load)
ort = rows.get("onnxruntime", (None,))[0]
for backend, (r, load) in rows.items():
    if r is None:
        print(f"{model:<8} {b:>6} {backend:<12} {'failed':>12}")
        continue
    rate = float(r["Inferences/Second"])
    ratio = f"{rate / float(ort['Inferences/Second']):.2f}x" if ort else "-"
    print(f"{model:<8} {b:>6} {backend:<12} {rate:>12.0f} {r['p50 latency']:>9} {r['p99 latency']:>9} {ratio:>9}  {load}")
PY
  done
done
echo '```' >>"$RES"
kill -TERM $kiln_pid; wait $kiln_pid || true; trap - EXIT
echo "results: $RES"
