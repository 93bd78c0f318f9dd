#!/usr/bin/env bash
# The recommend pipeline (examples/models/recommend) and the response cache, measured on this
# machine in one run (issue 13, "Benchmarks"):
#   1. pipeline req/s (perf_analyzer, gRPC, concurrency 2 and 8, the golden users) against its
#      slowest member alone (the member with the largest compute time per call, from Kiln's
#      histograms, sent the exact tensors it receives inside the pipeline), and against a client
#      that calls the members one after another and does retrieve / top-k / gather in NumPy
#      (client.py chain); client.py also drives the pipeline and the member, for a like-for-like
#      client; and against the retrieve step alone (recall_only, a one-step pipeline over the same
#      item table, sent the user_emb of the golden users), the pipeline's slowest stage;
#   2. pipeline overhead at concurrency 1 from Kiln's histograms (steps.py);
#   3. recommend p50 / p99 at concurrency 1 and 8 and req/s;
#   4. response cache on recommend (a copy of the repository with [response_cache] enable = true):
#      miss (all-distinct users) against hit (one user repeated) latency at concurrency 1, and
#      req/s at a 90% hit rate against 0% at concurrency 8, hit rates read from /stats;
#   5. the pipeline with max_queue_delay_us = 0 on its members (user_tower and fine_rank wait
#      200 us for a batch in examples/models), servers alternating with the shipped config,
#      concurrency 1 (with steps) and 8.
#
#   bench/pipeline/run.sh
#
# Env: SKIP_BUILD (use the binary already built), KILN (binary; default
# $CARGO_TARGET_DIR/release/kiln), OUT (default bench/out/pipeline-DATE), SERVER_CPUS / CLIENT_CPUS
# (taskset core lists, default 0 / 1), MI (perf_analyzer window ms, default 3000), TRIALS (default
# 6), STAB (stability %, default 20), SECONDS_PER (client.py measured seconds, default 10),
# MAX_LOAD (wait while the 1-minute load average is above it, default 1.5), WAIT_MAX (give up
# waiting after this many seconds and run anyway, default 900), HTTP_PORT / GRPC_PORT /
# METRICS_PORT (default 18300-18302), CACHE_MB (--response-cache-mb for item 4, default 256), PY /
# PA (python with numpy, onnx, tritonclient / perf_analyzer; default .venv). Results: $OUT/results.md
# (report.py), with every measurement as a JSON line in $OUT/rows.jsonl.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
HERE=$ROOT/bench/pipeline
OUT=${OUT:-$ROOT/bench/out/pipeline-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
KILN=${KILN:-$TARGET/release/kiln}
PY=${PY:-$ROOT/.venv/bin/python}
PA=${PA:-$ROOT/.venv/bin/perf_analyzer}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/kiln-peers}
HP=${HTTP_PORT:-18300} GP=${GRPC_PORT:-18301} MP=${METRICS_PORT:-18302}
MI=${MI:-3000} TRIALS=${TRIALS:-6} STAB=${STAB:-20} SECS=${SECONDS_PER:-10}
SERVER_CPUS=${SERVER_CPUS-0} CLIENT_CPUS=${CLIENT_CPUS-1}
pin_server=() pin_client=()
[ -z "$SERVER_CPUS" ] || pin_server=(taskset -c "$SERVER_CPUS")
[ -z "$CLIENT_CPUS" ] || pin_client=(taskset -c "$CLIENT_CPUS")
mkdir -p "$OUT/logs"
ROWS=$OUT/rows.jsonl
: >"$ROWS"

# perf_analyzer 2.51 links libb64.so.0d and libcudart.so.12 (see ../shared/peers/peers.sh setup)
for d in "$PEERS_HOME"/lib/usr/lib/*-linux-gnu "$PEERS_HOME"/venv/pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib \
  "$ROOT"/.venv/lib/python3*/site-packages/nvidia/cuda_runtime/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

load() { cut -d' ' -f1 /proc/loadavg; }
row() { echo "$1" >>"$ROWS"; }

wait_quiet() {
  local waited=0
  while awk -v l="$(load)" -v m="${MAX_LOAD:-1.5}" 'BEGIN { exit !(l > m) }'; do
    if [ "$waited" -ge "${WAIT_MAX:-900}" ]; then
      echo "load average $(load) still above ${MAX_LOAD:-1.5} after ${waited}s: running anyway" | tee -a "$OUT/machine.txt"
      return
    fi
    echo "load average $(load) > ${MAX_LOAD:-1.5}; waiting (${waited}s so far)"
    sleep 120
    waited=$((waited + 120))
  done
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD) ($(git -C "$ROOT" status --porcelain -uno | wc -l) modified tracked files)"
  echo "kiln: $KILN ($(stat -c %y "$KILN" 2>/dev/null || echo missing))"
  echo "perf_analyzer: $PA"
  echo "server cores: ${SERVER_CPUS:-all}; client cores: ${CLIENT_CPUS:-all}"
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Flags|L2|L3)'
  echo "uptime at start: $(uptime)"
} >"$OUT/machine.txt"

if [ -z "${SKIP_BUILD:-}" ]; then (cd "$ROOT" && cargo build --release -p kiln); fi
# a private copy: other builds into the shared target directory cannot swap it between servers
cp "$KILN" "$OUT/kiln"
KILN=$OUT/kiln
echo "kiln copy: $KILN ($(sha256sum "$KILN" | cut -c1-16))" >>"$OUT/machine.txt"

# inputs: golden users, member tensors from the reference chain, cache files
"${pin_client[@]}" "$PY" "$HERE/gen_inputs.py" "$ROOT/examples/models" "$OUT/data" | tee "$OUT/logs/gen_inputs.txt"
D=$OUT/data

start_kiln() { # repo label
  rm -f "$OUT/ready.json"
  "${pin_server[@]}" "$KILN" serve --model-repository "$1" --host 127.0.0.1 --http-port "$HP" --grpc-port "$GP" \
    --metrics-port "$MP" --ready-file "$OUT/ready.json" --log warn ${KILN_ARGS:-} >"$OUT/logs/kiln-$2.log" 2>&1 &
  kiln_pid=$!
  trap 'kill $kiln_pid 2>/dev/null || true' EXIT
  for _ in $(seq 600); do [ -s "$OUT/ready.json" ] && break; sleep 0.1; done
  [ -s "$OUT/ready.json" ] || { cat "$OUT/logs/kiln-$2.log"; exit 1; }
}
stop_kiln() { kill -TERM "$kiln_pid"; wait "$kiln_pid" || true; trap - EXIT; }
scrape() { curl -sf "127.0.0.1:$MP/metrics" >"$1"; }
stats() { curl -sf "127.0.0.1:$HP/v2/models/recommend/stats" >"$1"; }

pa() { # label model conc batch data [extra...]; appends a row
  local label=$1 model=$2 conc=$3 b=$4 data=$5
  shift 5
  local csv=$OUT/logs/pa-$label-c$conc.csv log=$OUT/logs/pa-$label-c$conc.log l0 rc=0
  rm -f "$csv"
  # -x 1: perf_analyzer 2.51 without a version fails on the pipeline ("failed to find the
  # requested model version") when it reads the ensemble's server-side statistics
  local cmd=("$PA" -m "$model" -x 1 -u "127.0.0.1:$GP" -i grpc -b "$b" --input-data "$data"
    --concurrency-range "$conc:$conc" -p "$MI" --max-trials "$TRIALS" -s "$STAB" -f "$csv" "$@")
  printf '%q ' "${cmd[@]}" >"$log"
  echo >>"$log"
  l0=$(load)
  "${pin_client[@]}" "${cmd[@]}" >>"$log" 2>&1 || rc=$?
  local stab=$STAB
  if [ "$rc" != 0 ]; then # no stable window within TRIALS: once more with a looser threshold
    echo "perf_analyzer $label c$conc: rc=$rc ($(grep -v '^ *$' "$log" | tail -1)); again with -s 50"
    stab=50 rc=0
    "${pin_client[@]}" "${cmd[@]}" -s 50 >>"$log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || { echo "perf_analyzer $label c$conc failed (rc=$rc):"; grep -v '^ *$' "$log" | tail -3; }
  fi
  "$PY" - "$csv" "$label" "$conc" "$b" "$l0" "$(load)" "$rc" "$stab" >>"$ROWS" <<'PY'
import csv, json, os, sys
path, label, conc, b, l0, l1, rc, stab = sys.argv[1:]
rows = list(csv.DictReader(open(path))) if os.path.exists(path) else []
r = rows[0] if rows else {}
print(json.dumps({"label": label, "client": "perf_analyzer", "conc": int(conc), "batch": int(b),
                  "req_s": float(r["Inferences/Second"]) / int(b) if r else None,
                  "p50_ms": float(r["p50 latency"]) / 1000 if r else None,
                  "p99_ms": float(r["p99 latency"]) / 1000 if r else None,
                  "load": [float(l0), float(l1)], "rc": int(rc), "stability_pct": int(stab)}))
PY
  tail -1 "$ROWS"
}

pyc() { # label mode conc
  local l0 out
  l0=$(load)
  out=$("${pin_client[@]}" "$PY" "$HERE/client.py" "$2" --url "127.0.0.1:$GP" --data "$D/members.npz" \
    --models "$ROOT/examples/models" --conc "$3" --warmup 2 --seconds "$SECS" 2>"$OUT/logs/client-$1-c$3.err") ||
    { echo "client.py $1 c$3 failed:"; tail -3 "$OUT/logs/client-$1-c$3.err"; return 0; }
  "$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(label=sys.argv[2], client="client.py", load=[float(sys.argv[3]), float(sys.argv[4])]); print(json.dumps(r))' \
    "$out" "$1" "$l0" "$(load)" >>"$ROWS"
  tail -1 "$ROWS"
}

wait_quiet
echo "load average at measurement start: $(uptime)" | tee -a "$OUT/machine.txt"

# ---- server without the response cache: items 1-3
REPO=$OUT/models
rm -rf "$REPO"
cp -r "$ROOT/examples/models" "$REPO"
mkdir -p "$REPO/recall_only/1"
cp "$ROOT/examples/models/recommend/1/items.safetensors" "$REPO/recall_only/1/"
cat >"$REPO/recall_only/config.toml" <<'TOML'
# recommend's retrieve step alone (user_emb -> the 1000 best of the 100k items)
backend = "pipeline"
max_batch_size = 0

[[input]]
name = "user_emb"
data_type = "FP32"
dims = [1, 16]

[[output]]
name = "recall_ids"
data_type = "INT64"
dims = [1, 1000]

[[step]]
name = "recall"
op = "retrieve"
table = "items"
k = 1000
input_map = { query = "user_emb" }
output_map = { ids = "recall_ids" }
TOML
start_kiln "$REPO" plain
"${pin_client[@]}" "$PY" "$HERE/client.py" pipeline --url "127.0.0.1:$GP" --data "$D/members.npz" \
  --models "$ROOT/examples/models" --conc 1 --warmup 0 --seconds 1 >/dev/null # golden answers + warm-up

scrape "$OUT/m_c1_before.txt"
pa recommend recommend 1 1 "$D/recommend.json"
scrape "$OUT/m_c1_after.txt"
"$PY" "$HERE/steps.py" "$OUT/m_c1_before.txt" "$OUT/m_c1_after.txt" recommend --json "$OUT/steps_c1.json" | tee "$OUT/steps_c1.txt"
SLOW=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["slowest_member"])' "$OUT/steps_c1.json")
case $SLOW in
  user_tower) SB=1 ;;
  coarse_rank) SB=1000 ;;
  fine_rank) SB=100 ;;
  *) echo "unexpected slowest member $SLOW"; exit 1 ;;
esac
echo "slowest member: $SLOW (batch $SB per call)" | tee -a "$OUT/machine.txt"

for c in 2 8; do
  scrape "$OUT/m_c${c}_before.txt"
  pa recommend recommend "$c" 1 "$D/recommend.json"
  scrape "$OUT/m_c${c}_after.txt"
  "$PY" "$HERE/steps.py" "$OUT/m_c${c}_before.txt" "$OUT/m_c${c}_after.txt" recommend >"$OUT/steps_c$c.txt"
  pa "member-$SLOW" "$SLOW" "$c" "$SB" "$D/$SLOW.json"
  pa recall-only recall_only "$c" 1 "$D/recall_only.json"
  pyc pipeline pipeline "$c"
  pyc "member-$SLOW" "member:$SLOW" "$c"
  pyc chain chain "$c"
done
stop_kiln

# ---- response cache on recommend: item 4
CREPO=$OUT/models-cache
rm -rf "$CREPO"
cp -r "$ROOT/examples/models" "$CREPO"
printf '\n[response_cache]\nenable = true\n' >>"$CREPO/recommend/config.toml"
KILN_ARGS="--response-cache-mb ${CACHE_MB:-256}" start_kiln "$CREPO" cache

cache_run() { # label conc data
  stats "$OUT/stats_$1_before.json"
  pa "$1" recommend "$2" 1 "$3"
  stats "$OUT/stats_$1_after.json"
  "$PY" - "$OUT/stats_$1_before.json" "$OUT/stats_$1_after.json" "$1" "$2" >>"$ROWS" <<'PY'
import json, sys
def s(p):
    st = json.load(open(p))["model_stats"][0]["inference_stats"]
    return st["cache_hit"]["count"], st["cache_miss"]["count"]
(h0, m0), (h1, m1) = s(sys.argv[1]), s(sys.argv[2])
h, m = h1 - h0, m1 - m0
print(json.dumps({"label": sys.argv[3] + "-stats", "conc": int(sys.argv[4]), "cache_hit": h, "cache_miss": m,
                  "hit_rate": h / (h + m) if h + m else None}))
PY
  tail -1 "$ROWS"
}
cache_run cache-miss 1 "$D/distinct_a.json"
cache_run cache-hit 1 "$D/repeat.json"
cache_run cache-0pct 8 "$D/distinct_b.json"
cache_run cache-90pct 8 "$D/hot90.json"
stop_kiln

# ---- members without the batching delay: item 5, alternating with the shipped config (two
# rounds of shipped / no-delay servers) so that both see the same load
NREPO=$OUT/models-nodelay
rm -rf "$NREPO"
cp -r "$ROOT/examples/models" "$NREPO"
sed -i 's/^max_queue_delay_us = .*/max_queue_delay_us = 0/' "$NREPO"/{user_tower,fine_rank}/config.toml
for round in 1 2; do
  for v in delay200 nodelay; do
    if [ $v = delay200 ]; then start_kiln "$REPO" "$v-$round"; else start_kiln "$NREPO" "$v-$round"; fi
    "${pin_client[@]}" "$PY" "$HERE/client.py" pipeline --url "127.0.0.1:$GP" --data "$D/members.npz" \
      --models "$ROOT/examples/models" --conc 1 --warmup 0 --seconds 1 >/dev/null
    scrape "$OUT/m_${v}_$round.before.txt"
    pa "recommend-$v-r$round" recommend 1 1 "$D/recommend.json"
    scrape "$OUT/m_${v}_$round.after.txt"
    "$PY" "$HERE/steps.py" "$OUT/m_${v}_$round.before.txt" "$OUT/m_${v}_$round.after.txt" recommend \
      --json "$OUT/steps_${v}_r$round.json" >"$OUT/steps_${v}_r$round.txt"
    pa "recommend-$v-r$round" recommend 8 1 "$D/recommend.json"
    stop_kiln
  done
done

echo "uptime at end: $(uptime)" >>"$OUT/machine.txt"
"$PY" "$HERE/report.py" "$OUT" >"$OUT/results.md"
echo "== $OUT/results.md"
cat "$OUT/results.md"
