#!/usr/bin/env bash
# bench/coord.sh BUILD_DIR: the resource coordinator's benchmarks.
#
# Runs BUILD_DIR/bench/coord_engine (in process, its data under a temporary
# folder), then starts BUILD_DIR/bin/jimbotd on a free loopback port with one
# GPU device, no NVML, a budget that does not run out (hourly_limit 1000000)
# and a request queue `bench` (budget: none, max_depth 10000), runs
# BUILD_DIR/bench/coord_rpc and BUILD_DIR/bench/queue_rpc against it and
# stops it. Knobs: ROUNDS (500), THREADS (4), DURATION (3); for queue_rpc
# REQUESTS (2000), SUBMITTERS ("1 4 32"), SIZE (100); ONLY=queue runs
# queue_rpc alone.
set -euo pipefail
build=${1:?usage: bench/coord.sh BUILD_DIR}
tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

if [ "${ONLY:-}" != queue ]; then
    echo "== coord_engine (in process)"
    "$build/bench/coord_engine" "$tmp"
fi

cat > "$tmp/bench.yaml" <<YAML
resource_coordinator:
  gpu:
    devices: 1
    nvml_library: ''
  claude:
    hourly_limit: 1000000
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
[ -n "$addr" ] || { echo "coord.sh: jimbotd did not start:" >&2; cat "$tmp/jimbotd.log" >&2; exit 1; }
if [ "${ONLY:-}" != queue ]; then
    echo "== coord_rpc (jimbotd at $addr, data on $(df --output=source "$tmp" | tail -1))"
    "$build/bench/coord_rpc" --addr "$addr" -r "${ROUNDS:-500}" -t "${THREADS:-4}" -d "${DURATION:-3}"
fi
echo "== queue_rpc (jimbotd at $addr)"
"$build/bench/queue_rpc" --addr "$addr" -q bench -n "${REQUESTS:-2000}" \
    -k "${SUBMITTERS:-1 4 32}" -d "${DURATION:-3}" -s "${SIZE:-100}"
