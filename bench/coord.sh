#!/usr/bin/env bash
# bench/coord.sh BUILD_DIR: the resource coordinator's benchmarks.
#
# Runs BUILD_DIR/bench/coord_engine (in process, its data under a temporary
# folder), then starts BUILD_DIR/bin/jimbotd on a free loopback port with one
# GPU device, no NVML and a budget that does not run out
# (hourly_limit 1000000), runs BUILD_DIR/bench/coord_rpc against it and stops
# it. Knobs: ROUNDS (500), THREADS (4), DURATION (3).
set -euo pipefail
build=${1:?usage: bench/coord.sh BUILD_DIR}
tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "== coord_engine (in process)"
"$build/bench/coord_engine" "$tmp"

cat > "$tmp/bench.yaml" <<YAML
resource_coordinator:
  gpu:
    devices: 1
    nvml_library: ''
  claude:
    hourly_limit: 1000000
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
echo "== coord_rpc (jimbotd at $addr, data on $(df --output=source "$tmp" | tail -1))"
"$build/bench/coord_rpc" --addr "$addr" -r "${ROUNDS:-500}" -t "${THREADS:-4}" -d "${DURATION:-3}"
