#!/usr/bin/env bash
# Pipeline throughput against its slowest member alone, for a pipeline whose cost is one member:
# `mlp_top` = mlp (64 rows, the example MLP 256-512-256-1) -> reshape -> top 8, against `mlp`
# alone with the same 64-row requests. This isolates what a pipeline adds around its members
# (the question Triton's ensemble reports raise), where bench/pipeline/run.sh measures the
# recommend chain, whose cost is spread over many steps.
#
#   bench/pipeline/dominated.sh            (server on core 0, perf_analyzer on core 1)
#
# Respects CARGO_TARGET_DIR, SKIP_BUILD=1, OUT (default bench/out/dominated), MI (ms, 3000),
# SERVER_CPUS / CLIENT_CPUS (taskset lists, default 0 / 1), PEERS_HOME (perf_analyzer's libb64).
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$ROOT/bench/out/dominated}
MI=${MI:-3000}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/kiln-peers}
SERVER_CPUS=${SERVER_CPUS-0} CLIENT_CPUS=${CLIENT_CPUS-1}
mkdir -p "$OUT"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p kiln
for d in "$PEERS_HOME"/lib/usr/lib/*-linux-gnu "$ROOT"/.venv/lib/python3*/site-packages/nvidia/cuda_runtime/lib \
  "$PEERS_HOME"/venv/pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

REPO=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$REPO"' EXIT
cp -r examples/models/mlp "$REPO/mlp"
mkdir -p "$REPO/mlp_top/1"
cat >"$REPO/mlp_top/config.toml" <<'TOML'
backend = "pipeline"
max_batch_size = 0
[[input]]
name = "x"
data_type = "FP32"
dims = [64, 256]
[[output]]
name = "top_rows"
data_type = "INT64"
dims = [8]
[[output]]
name = "top_scores"
data_type = "FP32"
dims = [8]
[[step]]
name = "score"
model = "mlp"
input_map = { x = "x" }
output_map = { y = "y" }
[[step]]
name = "flat"
op = "reshape"
shape = [64]
input_map = { input = "y" }
output_map = { output = "scores" }
[[step]]
name = "top"
op = "topk"
k = 8
input_map = { input = "scores" }
output_map = { indices = "top_rows", values = "top_scores" }
TOML

taskset -c "$SERVER_CPUS" "$TARGET/release/kiln" serve --model-repository "$REPO" --http-port 18400 \
  --grpc-port 18401 --metrics-port 18402 >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do
  curl -sf localhost:18400/v2/models/mlp_top/ready >/dev/null && break
  sleep 0.1
done

pa() { # model, concurrency, extra args...
  local m=$1 c=$2; shift 2
  taskset -c "$CLIENT_CPUS" .venv/bin/perf_analyzer -m "$m" -u localhost:18401 -i grpc \
    --concurrency-range "$c" --measurement-interval "$MI" -f "$OUT/$m-c$c.csv" "$@" >"$OUT/$m-c$c.log" 2>&1
  awk -F, 'NR==2 {print $2}' "$OUT/$m-c$c.csv"
}
# perf_analyzer counts a -b 64 request as 64 inferences: requests/s = inferences/s / 64
per_req() { python3 -c "print(round($1 / 64, 1))"; }
{
  echo "# mlp_top (pipeline) against mlp alone, 64-row requests, $(date -u +%FT%TZ)"
  echo "load before: $(cut -d' ' -f1 /proc/loadavg); $(lscpu | grep 'Model name' | sed 's/  */ /g')"
  echo "| conc | mlp alone, before / after (req/s of 64 rows) | mlp_top pipeline (req/s) | pipeline / member |"
  echo "|---|---|---|---|"
  for c in 1 2 8; do
    a=$(per_req "$(pa mlp "$c" -b 64)")
    p=$(pa mlp_top "$c" --shape x:64,256)
    a2=$(per_req "$(pa mlp "$c" -b 64)") # alone again after the pipeline, so drift shows
    echo "| $c | $a / $a2 | $p | $(python3 -c "print(f'{$p / ((($a) + ($a2)) / 2):.3f}x')") |"
  done
  echo "load after: $(cut -d' ' -f1 /proc/loadavg)"
} | tee "$OUT/results.md"
