#!/usr/bin/env bash
# bench/queue.sh BUILD_DIR: the request queue through jimbotd.
#
# Starts BUILD_DIR/bin/jimbotd on a free loopback port with one queue,
# `bench` (budget: none, so no API budget paces it; max_depth 10000), runs
# BUILD_DIR/bench/queue_rpc against it (its no-op worker in the same
# process) and stops it. Knobs: REQUESTS (2000), SUBMITTERS ("1 4 32"),
# DURATION (3), SIZE (100).
set -euo pipefail
build=${1:?usage: bench/queue.sh BUILD_DIR}
tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

cat > "$tmp/bench.yaml" <<YAML
resource_coordinator:
  gpu:
    devices: 1
    nvml_library: ''
  queues:
    bench: {budget: none, max_depth: 10000}
log:
  level: warn
YAML
"$build/bin/jimbotd" -c "$tmp/bench.yaml" --data-dir "$tmp/var" --listen 127.0.0.1:0 \
    --log-level info 2> "$tmp/jimbotd.log" &
pid=$!
addr=
for _ in $(seq 1 200); do
    addr=$(sed -n 's/.*gRPC server listening address=\([^ ]*\).*/\1/p' "$tmp/jimbotd.log")
    [ -n "$addr" ] && break
    sleep 0.05
done
[ -n "$addr" ] || { echo "queue.sh: jimbotd did not start:" >&2; cat "$tmp/jimbotd.log" >&2; exit 1; }
echo "== queue_rpc (jimbotd at $addr)"
"$build/bench/queue_rpc" --addr "$addr" -q bench -n "${REQUESTS:-2000}" \
    -k "${SUBMITTERS:-1 4 32}" -d "${DURATION:-3}" -s "${SIZE:-100}"
