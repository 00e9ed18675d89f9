#!/usr/bin/env bash
# jimbotd beside its peers, in one run, on one machine, with one set of
# parameters: bench/compare.sh BUILD_DIR
#
#   throughput  EVENTS durable events of SIZE bytes, published pipelined and
#               consumed with explicit acks: jimbotd (fsync group commit),
#               NATS JetStream (file storage; acks before any fsync), Redis
#               Streams (appendonly, appendfsync everysec).
#   latency     publish-to-delivery p50/p99 at RATE events/s for DURATION s
#               (jimbotd with its batch window at 0 ms), with NATS core
#               pub/sub (no persistence) as the reference.
#
# Every server is started here on loopback, on a free port, in a temporary
# folder, and stopped at the end. Results: a table on stdout and
# bench/results/throughput.csv, bench/results/latency.csv (one row per
# system and client count). Environment knobs, with their defaults:
#   EVENTS=1000000 SIZE=100 RATE=20000 DURATION=5 BATCH=256
#   CLIENTS="1 4"   publisher+consumer pairs: "1" runs 1+1 only
# The drivers are bench/compare/driver_*.c; bench/README.md says what each
# does per request, how to read the table and the CSVs, and the caveats.
set -euo pipefail

build=${1:?usage: bench/compare.sh BUILD_DIR}
build=$(cd "$build" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
bin=$build/bench/compare
results=$src/bench/results
EVENTS=${EVENTS:-1000000}
SIZE=${SIZE:-100}
RATE=${RATE:-20000}
DURATION=${DURATION:-5}
BATCH=${BATCH:-256}
CLIENTS=${CLIENTS:-"1 4"}

for tool in nats-server redis-server; do
    command -v $tool >/dev/null || { echo "compare.sh: $tool is missing (scripts/deps.sh)" >&2; exit 1; }
done
for d in compare_nats compare_redis compare_jimbotd; do
    [ -x "$bin/$d" ] || { echo "compare.sh: $bin/$d is missing (make bench builds it)" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/jb-compare.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # PORT NAME LOG: until something accepts on 127.0.0.1:PORT
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "compare.sh: $2 did not start; its log:" >&2
    cat "$3" >&2
    exit 1
}

nats_port=$(free_port)
mkdir -p "$tmp/nats"
nats-server -js -sd "$tmp/nats" -a 127.0.0.1 -p "$nats_port" >"$tmp/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port" nats-server "$tmp/nats.log"

redis_port=$(free_port)
mkdir -p "$tmp/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$tmp/redis" --appendonly yes \
    --appendfsync everysec --save '' >"$tmp/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" redis-server "$tmp/redis.log"

# jimbotd (the release build: RelWithDebInfo, -O2) with the shipped
# configuration and a "bench" layer: fsync at group commit (`batch`, the
# default, written out), the batch window at 0 ms (the latency scenario's
# condition; the throughput scenario runs with it too), and at most BATCH
# events per delivered message, as the JetStream consumer's MaxRequestBatch
# and Redis's XREADGROUP COUNT. Its data lives in the temporary folder.
jb_port=$(free_port)
mkdir -p "$tmp/jimbotd"
cp "$src/config/infrastructure.yaml" "$tmp/jimbotd/infrastructure.yaml"
printf 'event_bus:\n  fsync: batch\n  batch_window_ms: 0\n  max_batch_size: %s\n  topics: []\n' "$BATCH" \
    >"$tmp/jimbotd/bench.yaml"
jimbotd_up=0
if [ -x "$build/bin/jimbotd" ]; then
    "$build/bin/jimbotd" -c "$tmp/jimbotd/infrastructure.yaml" --env bench \
        --listen "127.0.0.1:$jb_port" --data-dir "$tmp/jimbotd/data" >"$tmp/jimbotd.log" 2>&1 &
    pids+=($!)
    wait_port "$jb_port" jimbotd "$tmp/jimbotd.log"
    jimbotd_up=1
fi
printf 'servers: nats-server %s, redis-server %s, jimbotd %s (pids %s), data in %s\n' \
    "$(nats-server --version | awk '{print $NF}')" \
    "$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')" \
    "$("$build/bin/jimbotd" --version 2>/dev/null | awk '{print $NF}')" "${pids[*]}" "$tmp"

common=(--size "$SIZE" --batch "$BATCH")
mkdir -p "$results"
tp_csv=$results/throughput.csv
lat_csv=$results/latency.csv
echo "system,publishers,consumers,events,size,elapsed_s,events_per_s,note" >"$tp_csv"
echo "system,publishers,consumers,rate,duration_s,size,published,consumed,samples,p50_us,p99_us,p999_us,max_us,note" >"$lat_csv"

# field KEY LINE: the value of KEY=... in a driver's output line.
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }

# run DRIVER SYSTEM URL ARGS...: prints the driver's line, or "pending" / "failed".
run() {
    local drv=$1 system=$2 url=$3 out rc
    shift 3
    set +e
    out=$("$bin/$drv" --system "$system" --url "$url" "${common[@]}" "$@" 2>"$tmp/err")
    rc=$?
    set -e
    if [ $rc -eq 3 ]; then
        echo pending
    elif [ $rc -ne 0 ]; then
        sed 's/^/    /' "$tmp/err" >&2
        echo failed
    else
        echo "$out"
    fi
}

declare -A tput p99
printf '\n== throughput: %s durable events of %s B, publish + consume + ack\n' "$EVENTS" "$SIZE"
printf '%-10s %7s %10s %14s  %s\n' system clients elapsed_s events/s note
for n in $CLIENTS; do
    for row in "jimbotd compare_jimbotd 127.0.0.1:$jb_port" \
               "jetstream compare_nats nats://127.0.0.1:$nats_port" \
               "redis compare_redis 127.0.0.1:$redis_port"; do
        read -r system drv url <<<"$row"
        out=$(run "$drv" "$system" "$url" --scenario throughput --events "$EVENTS" \
                  --publishers "$n" --consumers "$n")
        case $out in
        pending|failed)
            note=$([ "$out" = pending ] && echo "driver pending" || echo "run failed")
            printf '%-10s %3s+%-3s %10s %14s  %s\n' "$system" "$n" "$n" - - "$system: $note"
            echo "$system,$n,$n,$EVENTS,$SIZE,,,$note" >>"$tp_csv" ;;
        *)
            e=$(field elapsed_s "$out"); r=$(field events_per_s "$out")
            tput[$system.$n]=$r
            printf '%-10s %3s+%-3s %10s %14s\n' "$system" "$n" "$n" "$e" "$r"
            echo "$system,$n,$n,$EVENTS,$SIZE,$e,$r," >>"$tp_csv" ;;
        esac
    done
done

printf '\n== latency: publish to delivery at %s events/s for %s s, %s B\n' "$RATE" "$DURATION" "$SIZE"
printf '%-10s %7s %13s %9s %9s %9s %9s  %s\n' system clients received p50_us p99_us p999_us max_us note
for n in $CLIENTS; do
    for row in "jimbotd compare_jimbotd 127.0.0.1:$jb_port" \
               "jetstream compare_nats nats://127.0.0.1:$nats_port" \
               "redis compare_redis 127.0.0.1:$redis_port" \
               "nats-core compare_nats nats://127.0.0.1:$nats_port"; do
        read -r system drv url <<<"$row"
        out=$(run "$drv" "$system" "$url" --scenario latency --rate "$RATE" \
                  --duration "$DURATION" --publishers "$n" --consumers "$n")
        case $out in
        pending|failed)
            note=$([ "$out" = pending ] && echo "driver pending" || echo "run failed")
            printf '%-10s %3s+%-3s %13s %9s %9s %9s %9s  %s\n' "$system" "$n" "$n" - - - - - \
                "$system: $note"
            echo "$system,$n,$n,$RATE,$DURATION,$SIZE,,,,,,,,$note" >>"$lat_csv" ;;
        *)
            pub=$(field published "$out"); con=$(field consumed "$out")
            p99[$system.$n]=$(field p99_us "$out")
            printf '%-10s %3s+%-3s %13s %9s %9s %9s %9s\n' "$system" "$n" "$n" "$con/$pub" \
                "$(field p50_us "$out")" "${p99[$system.$n]}" "$(field p999_us "$out")" \
                "$(field max_us "$out")"
            echo "$system,$n,$n,$RATE,$DURATION,$SIZE,$pub,$con,$(field samples "$out"),$(field p50_us "$out"),${p99[$system.$n]},$(field p999_us "$out"),$(field max_us "$out")," >>"$lat_csv" ;;
        esac
    done
done

# The targets, as ratios from this run.
printf '\n== targets (same run)\n'
for n in $CLIENTS; do
    if [ -n "${tput[jimbotd.$n]:-}" ]; then
        for peer in jetstream redis; do
            [ -n "${tput[$peer.$n]:-}" ] && awk -v a="${tput[jimbotd.$n]}" -v b="${tput[$peer.$n]}" \
                -v p="$peer" -v n="$n" 'BEGIN { printf "throughput %s+%s: jimbotd / %s = %.2fx (target >= 3x)\n", n, n, p, a / b }'
        done
    else
        echo "throughput $n+$n: jimbotd driver pending"
    fi
    if [ -n "${p99[jimbotd.$n]:-}" ] && [ -n "${p99[nats-core.$n]:-}" ]; then
        awk -v a="${p99[jimbotd.$n]}" -v b="${p99[nats-core.$n]}" -v n="$n" \
            'BEGIN { printf "latency %s+%s: p99 jimbotd %.0f us vs NATS core %.0f us (target: not worse)\n", n, n, a, b }'
    else
        echo "latency $n+$n: jimbotd driver pending"
    fi
done
[ "$jimbotd_up" -eq 1 ] || echo "(no $build/bin/jimbotd: its rows could not run)"
echo "csv: $tp_csv $lat_csv"
