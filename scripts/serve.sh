#!/usr/bin/env bash
# Serves the example model repository with a release build of kiln:
#
#   scripts/serve.sh [kiln serve options...]     e.g. scripts/serve.sh --http-port 8000 --grpc-port 8001
#
# Builds `cargo build --release -p kiln` first (a no-op when up to date; skipped when cargo is
# missing and a binary exists). Respects CARGO_TARGET_DIR. Regenerate the models with
# `.venv/bin/python examples/gen_models.py`.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac # cargo reads a relative one from the caller's directory
export CARGO_TARGET_DIR=$TARGET
BIN=$TARGET/release/kiln

cd "$ROOT"
if command -v cargo >/dev/null 2>&1; then
  scripts/setup-system.sh
  cargo build --release -p kiln
elif [ ! -x "$BIN" ]; then
  echo "serve.sh: cargo not found and no binary at $BIN" >&2
  exit 1
fi
echo "serve.sh: $BIN serve --model-repository examples/models $*" >&2
exec "$BIN" serve --model-repository examples/models "$@"
