#!/usr/bin/env bash
# Runs every benchmark binary of a build: bench/run.sh BUILD_DIR [ARGS...]
# Each benchmark prints its own report; a failing one fails the run.
set -euo pipefail
build=${1:?usage: bench/run.sh BUILD_DIR}
shift
status=0
for b in "$build"/bench/*; do
    [ -x "$b" ] && [ -f "$b" ] || continue
    echo "== $(basename "$b")"
    "$b" "$@" || status=1
done
exit $status
