#!/usr/bin/env bash
# kiln cache benchmark: a data-loader-like reader (10k files of ~100 KB, shuffled, 8 threads,
# sha256-checked) against direct S3 (boto3), local disk, rclone and s3fs-fuse (the peers harness in
# ../shared/peers/datacache) and the kiln cache mount cold, warm, warm after a remount, and after a
# warm-up; all on one moto S3 endpoint on 127.0.0.1, in one run.
#
#   bench/datacache/run.sh [--files 10000] [--min-kb 80] [--max-kb 120] [--threads 8] [--peers "rclone s3fs"]
#
# Writes the raw rows and the table under bench/out/datacache/ and the figures, as ratios against
# the same run's baselines, into the "## kiln cache" section of bench/RESULTS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers/datacache}
PEERS=$PEERS_DIR/datacache.sh
ST=${PEERS_HOME:-$HOME/.cache/kiln-peers}/datacache
OUT=$ROOT/bench/out/datacache
FILES=10000 MIN_KB=80 MAX_KB=120 THREADS=8 PEER_LIST="rclone s3fs"
KILN_MEMORY=${KILN_MEMORY:-2GiB}
while [ $# -gt 0 ]; do
  case $1 in
    --files) FILES=$2; shift 2 ;;
    --min-kb) MIN_KB=$2; shift 2 ;;
    --max-kb) MAX_KB=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --peers) PEER_LIST=$2; shift 2 ;;
    *) echo "usage: $0 [--files N] [--min-kb K] [--max-kb K] [--threads T] [--peers \"rclone s3fs\"]" >&2; exit 2 ;;
  esac
done
CMD="bench/datacache/run.sh --files $FILES --min-kb $MIN_KB --max-kb $MAX_KB --threads $THREADS --peers \"$PEER_LIST\""

# the same throwaway keys as the peers script; moto accepts any and nothing leaves 127.0.0.1
export AWS_ACCESS_KEY_ID=datacache AWS_SECRET_ACCESS_KEY=datacache-secret AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_CA_BUNDLE 2>/dev/null || true

log() { echo "== $*" >&2; }
[ -x "$PEERS" ] || { echo "peers harness not found at $PEERS_DIR (set PEERS_DIR)" >&2; exit 1; }
mkdir -p "$OUT"

# ---------------------------------------------------------------- kiln binary
log "building kiln (release)"
(cd "$ROOT" && cargo build --release -q -p kiln --bin kiln)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
KILN=("$TARGET/release/kiln" --log "info,foyer=warn,fuser=warn" cache)

# ---------------------------------------------------------------- peers and dataset
"$PEERS" setup
"$PEERS" s3 start >/dev/null || true
EP=http://127.0.0.1:$(cat "$ST/run/s3.port")
if [ "$(cat "$ST/data/params" 2>/dev/null)" != "$FILES files, $MIN_KB-$MAX_KB KB, seed ${DC_SEED:-1234}, ${DC_CLASSES:-10} classes" ]; then
  log "dataset: $FILES files of $MIN_KB-$MAX_KB KB"
  "$PEERS" dataset "$FILES" "$MIN_KB" "$MAX_KB"
fi
log "peers: local disk, boto3, $PEER_LIST"
"$PEERS" bench --threads "$THREADS" --peers "$PEER_LIST" > "$OUT/peers.log" 2>&1 || { tail -20 "$OUT/peers.log"; exit 1; }
PEER_TSV=$(ls -t "$ST"/results/bench-*.tsv | head -1)
TSV=$OUT/bench-$(date +%Y%m%d-%H%M%S).tsv
cp "$PEER_TSV" "$TSV"

# ---------------------------------------------------------------- kiln passes
PY=$ST/venv/bin/python
MNT=$OUT/mnt
CACHE=$OUT/cache
mkdir -p "$MNT"
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "   (page cache not dropped)" >&2; }
read_pass() { # PASS
  timeout 1800 "$PY" "$PEERS_DIR/dc.py" read --root "$MNT" --manifest "$ST/data/manifest.tsv" --threads "$THREADS" \
    --seed "${DC_SEED:-1234}" --system "kiln" --pass "$1" --tsv "$TSV" --s3log "$ST/run/s3.log" >/dev/null
}
KPID=
kiln_mount() { # MEMORY
  "${KILN[@]}" mount --source s3://bench/data/ --endpoint "$EP" --cache-dir "$CACHE" --memory-size "$1" \
    --disk-size 8GiB --fuse-threads 16 --admin-addr 127.0.0.1:0 "$MNT" > "$OUT/mount.log" 2>&1 &
  KPID=$!
  for _ in $(seq 1 300); do mountpoint -q "$MNT" && return 0; kill -0 "$KPID" 2>/dev/null || break; sleep 0.1; done
  tail -20 "$OUT/mount.log" >&2; return 1
}
kiln_umount() { kill -TERM "$KPID"; wait "$KPID" || { echo "kiln mount exited with $?" >&2; return 1; }; }
trap 'mountpoint -q "$MNT" && kill -TERM "$KPID" 2>/dev/null; true' EXIT

log "kiln: empty cache, mount ($KILN_MEMORY memory tier), cold pass, warm pass"
rm -rf "$CACHE"
kiln_mount "$KILN_MEMORY"
drop_caches; read_pass cold
drop_caches; read_pass "warm"
kiln_umount
log "kiln: remount keeping the cache dir (memory tier empty): warm after remount"
kiln_mount "$KILN_MEMORY"
drop_caches; read_pass "warm after remount (disk tier)"
kiln_umount
log "kiln: empty cache, warm-up with 16 threads, then mount and read"
rm -rf "$CACHE"
drop_caches
"${KILN[@]}" warmup --source s3://bench/data/ --endpoint "$EP" --cache-dir "$CACHE" --memory-size 256MiB \
  --disk-size 8GiB --threads 16 --no-progress --json > "$OUT/warmup.json" 2> "$OUT/warmup.log"
"$PY" - "$OUT/warmup.json" "$TSV" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
with open(sys.argv[2], "a") as f:
    f.write("kiln\twarm-up (16 threads, fetch + verify)\t%d\t%.3f\t%.1f\t%.1f\t%d\t0\t-1\n" % (
        r["done"], r["elapsed_secs"], r["done"] / r["elapsed_secs"], r["bytes_fetched"] / 1e6 / r["elapsed_secs"], r["failed"]))
EOF
kiln_mount "$KILN_MEMORY"
drop_caches; read_pass "warm after warm-up (disk tier)"
kiln_umount

# ---------------------------------------------------------------- table and ratios
MD=${TSV%.tsv}.md
"$PY" "$PEERS_DIR/dc.py" table "$TSV" > "$MD"
"$PY" - "$TSV" "$ROOT/bench/RESULTS.md" "$MD" "$CMD" "$KILN_MEMORY" "$THREADS" "$(cat "$ST/data/params")" <<'EOF'
import sys, re, datetime, os
tsv, results, md, cmd, mem, threads, params = sys.argv[1:8]
rows = {}
for line in open(tsv):
    p = line.rstrip("\n").split("\t")
    if len(p) >= 7:
        rows[(p[0], p[1])] = (float(p[4]), float(p[5]), p[6])
def fps(s, p):
    return rows.get((s, p), (float("nan"),))[0]
kw = fps("kiln", "warm")
ratios = [
    ("kiln warm / local-disk cold (page cache dropped)", kw, fps("local-disk", "cold"), "target >= 0.8"),
    ("kiln warm / local-disk warm (page cache)", kw, fps("local-disk", "warm (page cache)"), ""),
    ("kiln warm / s3-boto3 direct (cold remote)", kw, fps("s3-boto3", "direct"), "target >= 20"),
    ("kiln warm / kiln cold", kw, fps("kiln", "cold"), ""),
    ("kiln warm / rclone warm", kw, fps("rclone", "warm"), "target > 1"),
    ("kiln warm / s3fs warm", kw, fps("s3fs", "warm"), "target > 1"),
    ("kiln warm after remount (disk tier) / rclone warm after remount", fps("kiln", "warm after remount (disk tier)"), fps("rclone", "warm after remount"), ""),
    ("kiln warm after remount (disk tier) / s3fs warm after remount", fps("kiln", "warm after remount (disk tier)"), fps("s3fs", "warm after remount"), ""),
    ("kiln warm-up files/s / rclone cold pass (pre-reading everything once)", fps("kiln", "warm-up (16 threads, fetch + verify)"), fps("rclone", "cold"), "target > 1"),
    ("kiln warm-up files/s / s3fs cold pass", fps("kiln", "warm-up (16 threads, fetch + verify)"), fps("s3fs", "cold"), "target > 1"),
    ("kiln warm-up files/s / s3-boto3 direct", fps("kiln", "warm-up (16 threads, fetch + verify)"), fps("s3-boto3", "direct"), ""),
]
lines = ["## kiln cache", "",
    "Command: `%s` (from the repository root; moto, the FUSE daemons and the reader share this machine's %d cores)." % (cmd, os.cpu_count()),
    "Run: %s. Dataset: %s; reader: %s threads, shuffled order, sha256 of every file checked inside the timed region;"
    " page cache dropped before every pass except local-disk `warm (page cache)`. kiln memory tier %s, disk tier 8 GiB,"
    " block 4 MiB, 16 FUSE threads. `warm` = second pass on the same mount (memory tier);"
    " `warm after remount` = new process, memory empty, data from the disk tier; the warm-up row is `kiln cache warmup --threads 16`"
    " into an empty cache (fetch, then read back and verify every file from the disk tier) and its files/s covers all of it." % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), params, threads, mem),
    "", "Ratios (files/s over files/s of the same run):", "", "| ratio | value | |", "|---|---|---|"]
for name, a, b, t in ratios:
    v = a / b if b and b == b and a == a else float("nan")
    lines.append("| %s | %.2f | %s |" % (name, v, t))
lines += ["", "All rows:", ""] + open(md).read().rstrip().split("\n") + [""]
section = "\n".join(lines) + "\n"
text = open(results).read() if os.path.exists(results) else "# Benchmark results\n\n"
m = re.search(r"^## kiln cache\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
text = text[:m.start()] + section + text[m.end():] if m else text.rstrip("\n") + "\n\n" + section
open(results, "w").write(text)
print(section)
EOF
echo "(raw rows: $TSV)" >&2
