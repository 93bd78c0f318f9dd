#!/usr/bin/env bash
# Soak harness: overload, slow connections and load/unload cycles against a release `kiln serve`
# on loopback, the server pinned to core 0 and the load generator (kiln-soak) to core 1.
# Bounded in time (about 1.5 minutes). Writes $OUT/soak.md with the figures.
#
#   bench/soak/run.sh
#
# Env: SKIP_BUILD (use the binaries already built), SECS (seconds per load phase, default 10),
# HIDDEN (width of the compute-bound model, default 2048), QUEUE (the model's max_queue_size,
# default 1), OVERLOAD (offered load as a multiple of capacity, default 3), SERVER_FLAGS (extra
# `kiln serve` flags; default `--http-header-timeout 2 --idle-timeout 5 --sched-batch`: the slow
# sockets are recycled within the phase, and network and compute share core 0 without
# preempting each other; `--compute-nice 10` instead is the other choice, see bench/RESULTS.md), IDLE / TRICKLE (slow sockets, default 400 / 400), CYCLES (default 50),
# NICE (run server and generator at this nice level, e.g. -10 on a machine shared with builds),
# KILN_SOAK_ARRIVALS=poisson (exponential gaps between the overload phase's requests instead
# of even spacing).
#
# Capacity is measured on `mlp_capacity`, the same model file served beside `mlp` with a queue
# of 8 and loaded by 4 connections: its worker always has a request waiting and none is ever
# refused, so the figure is what this server computes per second on its core, without idle
# round trips (too few connections) or refusals (too many for `mlp`'s queue) taking from it.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
OUT=${OUT:-$ROOT/bench/out/soak-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PY=${PY:-$ROOT/.venv/bin/python}
HP=${HTTP_PORT:-19100} GP=${GRPC_PORT:-19101} MP=${METRICS_PORT:-19102}
SECS=${SECS:-10} QUEUE=${QUEUE:-1} OVERLOAD=${OVERLOAD:-3}
mkdir -p "$OUT/models/mlp/1"
load0=$(cut -d' ' -f1-3 /proc/loadavg)

[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -p kiln -p kiln-soak)
"$PY" "$ROOT/bench/soak/gen_heavy.py" "$OUT/models/mlp/1/model.onnx" "${HIDDEN:-2048}"
model_config() { # QUEUE
  cat <<TOML
backend = "tract"
max_batch_size = 1
[[input]]
name = "x"
data_type = "FP32"
dims = [256]
[[output]]
name = "y"
data_type = "FP32"
dims = [1]
[dynamic_batching]
max_queue_size = $1
[instance_group]
count = 1
TOML
}
model_config "$QUEUE" >"$OUT/models/mlp/config.toml"
mkdir -p "$OUT/models/mlp_capacity/1"
cp "$OUT/models/mlp/1/model.onnx" "$OUT/models/mlp_capacity/1/model.onnx"
model_config 8 >"$OUT/models/mlp_capacity/config.toml"

pre=(nice -n "${NICE:-0}")
cmd=("${pre[@]}" taskset -c 0 "$TARGET/release/kiln" serve --model-repository "$OUT/models" --host 127.0.0.1
  --http-port "$HP" --grpc-port "$GP" --metrics-port "$MP" --io-threads 1
  --model-control-mode explicit --load-model mlp --load-model mlp_capacity --ready-file "$OUT/ready.json" --log warn
  ${SERVER_FLAGS:---http-header-timeout 2 --idle-timeout 5 --sched-batch})
"${cmd[@]}" >"$OUT/kiln.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$OUT/ready.json" ] && break; sleep 0.1; done
[ -s "$OUT/ready.json" ] || { cat "$OUT/kiln.log"; exit 1; }

soak() { local c=$1; shift; "${pre[@]}" taskset -c 1 "$TARGET/release/kiln-soak" "$c" "127.0.0.1:$HP" "$@"; }
rss() { awk '/VmRSS/ {print $2" kB"}' "/proc/$pid/status"; }
fds() { ls "/proc/$pid/fd" | wc -l; }
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }
# a counter of the served mlp from /metrics (0 without the series)
metric() { curl -s "127.0.0.1:$MP/metrics" | awk -v k="$1{model=\"mlp\",version=\"1\"}" '$1 == k {v=$2} END {print v+0}'; }
# CPU seconds of the server's threads whose name starts with $1
cpu() { cat /proc/$pid/task/*/stat 2>/dev/null | awk -v n="($1" 'index($2, n) == 1 {t += $14 + $15} END {printf "%.2f", t / 100}'; }

soak closed 2 1 >/dev/null   # warm-up
KILN_SOAK_MODEL=mlp_capacity soak closed 2 1 >/dev/null
rss0=$(rss) fd0=$(fds)
unloaded=$(soak closed "$SECS" 1)
# on mlp_capacity (a queue of 8, 4 connections): the worker always has the next request at
# hand and none is refused (see the header)
capacity=$(KILN_SOAK_MODEL=mlp_capacity soak closed "$SECS" 4)
cap=$(field "$capacity" ok_per_s)
rate=$(awk -v c="$cap" -v m="$OVERLOAD" 'BEGIN {printf "%d", c * m}')
idle0=$(metric kiln_inference_worker_idle_waits_total) starved0=$(metric kiln_inference_worker_starved_waits_total)
exec0=$(metric kiln_inference_executions_total) wcpu0=$(cpu kiln-mlp-) iocpu0=$(cpu kiln-io)
overload=$(soak open "$SECS" "$rate" 128)
idle1=$(metric kiln_inference_worker_idle_waits_total) starved1=$(metric kiln_inference_worker_starved_waits_total)
exec1=$(metric kiln_inference_executions_total) wcpu1=$(cpu kiln-mlp-) iocpu1=$(cpu kiln-io)
rss_o=$(rss) fd_o=$(fds)
light=$(awk -v c="$cap" 'BEGIN {printf "%d", c / 4}')
slow=$(soak slow "$SECS" "$light" "${IDLE:-400}" "${TRICKLE:-400}")
sleep 1
rss_s=$(rss) fd_s=$(fds)
cycles=$(soak cycles "${CYCLES:-50}" "$light")
sleep 1
rss1=$(rss) fd1=$(fds)
curl -s "127.0.0.1:$MP/metrics" | grep -E '^kiln_(server_(admission|connections)|inference_worker)' >"$OUT/server_metrics.txt" || true

{
  echo "### Soak run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "CPU: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores;" \
    "flags: $(lscpu | awk -F: '/Flags/ {print $2}' | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|fma)$' | tr '\n' ' ')"
  echo
  echo "Server: \`${cmd[*]}\` (model: gen_heavy.py hidden ${HIDDEN:-2048}, max_batch_size 1, max_queue_size $QUEUE, 1 instance)"
  echo "Generator: \`taskset -c 1 kiln-soak ...\` (open loop for overload, $SECS s per phase, arrivals ${KILN_SOAK_ARRIVALS:-even})"
  echo
  echo "| phase | figures |"
  echo "|---|---|"
  echo "| unloaded (closed loop, 1 connection) | $unloaded |"
  echo "| capacity (closed loop, 4 connections, on mlp_capacity: the same model with a queue of 8) | $capacity |"
  echo "| overload (open loop, ${OVERLOAD}x capacity, 128 connections) | $overload |"
  echo "| slow connections (light load while slow sockets sit open) | $slow |"
  echo "| load/unload cycles under light load | $cycles |"
  echo "| overload: batches computed / worker waits on an empty queue / of them while an admitted request was being read | $((exec1 - exec0)) / $((idle1 - idle0)) / $((starved1 - starved0)) |"
  echo "| overload: CPU seconds of the worker / network threads (of $SECS s) | $(awk -v a="$wcpu0" -v b="$wcpu1" 'BEGIN {printf "%.2f", b - a}') / $(awk -v a="$iocpu0" -v b="$iocpu1" 'BEGIN {printf "%.2f", b - a}') |"
  echo "| RSS before / after overload / after slow / after cycles | $rss0 / $rss_o / $rss_s / $rss1 |"
  echo "| open fds before / after overload / after slow / after cycles | $fd0 / $fd_o / $fd_s / $fd1 |"
  echo
  u99=$(field "$unloaded" ok_p99_ms) a99=$(field "$overload" ok_p99_ms) r99=$(field "$overload" rej_p99_ms)
  good=$(field "$overload" ok_per_s)
  echo "Goals: rejection p99 $r99 ms (goal < 1 ms); admitted p99 $a99 ms vs unloaded p99 $u99 ms" \
    "(goal < 2x); goodput $good/s vs capacity $cap/s = $(awk -v g="$good" -v c="$cap" 'BEGIN {printf "%.0f%%", 100 * g / c}') (goal >= 90%)."
  echo
  echo "Load average before / after the run (other builds share the machine): $load0 / $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "Server metrics after the run:"
  echo '```'
  cat "$OUT/server_metrics.txt"
  echo '```'
} | tee "$OUT/soak.md"
