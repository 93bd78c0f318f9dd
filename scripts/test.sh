#!/usr/bin/env bash
# The project's test command: sets up the Python environment the tritonclient compatibility test
# uses, then runs every crate's tests in release mode. Extra arguments go to `cargo test`
# (e.g. `scripts/test.sh tritonclient` runs only the tests whose names contain that). Exits non-zero
# when anything fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
cd "$ROOT"

scripts/setup-system.sh
scripts/setup-python.sh
echo "test.sh: cargo test --release --workspace $* (target dir: ${CARGO_TARGET_DIR:-$ROOT/target})"
exec cargo test --release --workspace "$@"
