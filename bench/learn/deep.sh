#!/usr/bin/env bash
# Deep training throughput, in one run: kiln-learn's DeepTrainer (crates/kiln-learn/benches/deep.rs,
# criterion) and PyTorch CPU training (bench/learn/torch_deep.py) of the same model
# (examples/models/dlrm_small: dense 13, bottom 13-64-16, 4 tables 1000 x 16 with 4 ids per
# feature, sum pooling, concat, top 80-64-32-1), batch 256, Adam (lr 1e-3) on the MLPs and sparse
# AdaGrad (lr 1e-2) on the embeddings, log loss. Both run one thread pinned to core 0
# (`taskset -c 0`; PyTorch with set_num_threads(1)); with TORCH_THREADS=2 PyTorch also runs on two
# threads, unpinned, for reference. Prints samples/s of each and the ratio.
#
#   bench/learn/deep.sh
#
# Env: PY (python with torch and safetensors; default: the recsys peer's venv,
#      ${PEERS_HOME:-~/.cache/kiln-peers}/recsys/venv, made by ../shared/peers/recsys/recsys.sh setup),
#      CARGO_TARGET_DIR (default ./target), SECONDS_PER_RUN (PyTorch, default 3), TORCH_THREADS.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
cd "$ROOT"
PY=${PY:-${PEERS_HOME:-$HOME/.cache/kiln-peers}/recsys/venv/bin/python}
[ -x "$PY" ] || { echo "deep.sh: no python with torch at $PY: run ../shared/peers/recsys/recsys.sh setup or set PY" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WEIGHTS=$ROOT/examples/models/dlrm_small/1/model.safetensors

lscpu | grep 'Model name' || true
uptime
cargo bench -p kiln-learn --no-default-features --bench deep --no-run
taskset -c 0 cargo bench -p kiln-learn --no-default-features --bench deep -- --noplot deep_train
EST=$CARGO_TARGET_DIR/criterion/deep_train/dlrm_small_batch256/new/estimates.json
kiln=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); print(256e9 / e["mean"]["point_estimate"])' "$EST")

export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
torch_json=$(OMP_NUM_THREADS=1 taskset -c 0 "$PY" -W ignore bench/learn/torch_deep.py \
  --weights "$WEIGHTS" --batch 256 --threads 1 --seconds "${SECONDS_PER_RUN:-3}")
echo "$torch_json"
torch=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["samples_per_s"])' "$torch_json")
if [ -n "${TORCH_THREADS:-}" ]; then
  OMP_NUM_THREADS=$TORCH_THREADS "$PY" -W ignore bench/learn/torch_deep.py \
    --weights "$WEIGHTS" --batch 256 --threads "$TORCH_THREADS" --seconds "${SECONDS_PER_RUN:-3}"
fi
uptime
python3 - "$kiln" "$torch" <<'EOF'
import sys
k, t = float(sys.argv[1]), float(sys.argv[2])
print(f"deep training, dlrm_small, batch 256, 1 thread on core 0: kiln {k:,.0f} samples/s, "
      f"PyTorch {t:,.0f} samples/s, kiln / PyTorch = {k / t:.2f}x")
EOF
