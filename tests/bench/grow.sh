#!/bin/sh
# make bench, part 6: the cost of an event as the journal grows. One certhook serve on SQLite
# takes windows of WINDOW seconds of 50 keep-alive connections (a new id per request, so every
# event is journaled and dispatched), each followed by the backlog's drain, until EVENTS events
# are in the journal (or MAX_SECONDS have passed). Each row: events journaled so far, the
# window's requests/s, server CPU microseconds per event (the drain included), and the journal's
# bytes on disk per event (certhook.db + its WAL) against the payload's size.
# Then the bar's comparison, paired so that the machine's load falls on both alike: PAIRS
# rounds, each a window on the full journal (the same server) and one on an empty journal
# (a new server, new data directory), alternating; their CPU per event and the ratio.
# Prints markdown tables. Every loop is bounded in time.
#   EVENTS=1000000 WINDOW=10 MAX_SECONDS=900 PAIRS=3 BUILD=build sh tests/bench/grow.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/bench
BUILD=${BUILD:-build}
EVENTS=${EVENTS:-1000000}
WINDOW=${WINDOW:-10}
MAX_SECONDS=${MAX_SECONDS:-900}
PAIRS=${PAIRS:-3}
CONNS=${CONNS:-50}
SETTLE_MAX=${SETTLE_MAX:-60}
certhook=${CERTHOOK:-$root/$BUILD/certhook-dev}
payload=$root/examples/payloads/cloudflare-validation-failed.json
pin_server="" pin_client=""
if [ "$(nproc)" -ge 2 ]; then pin_server="taskset -c 1" pin_client="taskset -c 0"; fi
run=$(mktemp -d)
pids=""
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; rm -rf "$run"' EXIT
hz=$(getconf CLK_TCK)
cat >"$run/certhook.conf.lua" <<CONF
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }
log = { level = "warn" }
CONF
chmod 600 "$run/certhook.conf.lua"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
pending() { sqlite3 "$1/certhook.db" "SELECT count(*) FROM events WHERE state <> 2" 2>/dev/null || echo 1; }
bytes() { cat "$1"/certhook.db* 2>/dev/null | wc -c; }

# start DIR: a server on data directory DIR; sets pid and url.
start() {
    $pin_server "$certhook" serve --config "$run/certhook.conf.lua" --handlers "$here/handlers" \
        --data "$1" --log-level info 2>"$1.log" &
    pid=$!
    pids="$pids $pid"
    i=0
    until grep -q '"listening"' "$1.log" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$1.log" >&2; exit 1; }; sleep 0.1
    done
    url=http://127.0.0.1:$(sed -n 's/.*"listen":"[^"]*:\([0-9]*\)".*/\1/p' "$1.log")/hooks/cloudflare
}

# window PID URL DIR TAG: one window of load and the drain after it; sets n, rps and us
# (server CPU microseconds per event).
window() {
    t0=$(cpu_ticks $1)
    BENCH_PAYLOAD=$payload BENCH_RUN=$4 $pin_client wrk -t1 -c"$CONNS" -d"${WINDOW}s" -s "$here/post.lua" "$2" >"$run/wrk.txt"
    i=0; while [ "$(pending "$3")" != 0 ] && [ $i -lt $((SETTLE_MAX * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    t1=$(cpu_ticks $1)
    n=$(sed -n 's/^BENCH requests=\([0-9]*\).*/\1/p' "$run/wrk.txt")
    rps=$(sed -n 's/^BENCH .* rps=\([0-9.]*\).*/\1/p' "$run/wrk.txt")
    us=$(awk -v n="$n" -v ticks=$((t1 - t0)) -v hz="$hz" 'BEGIN { printf "%.1f", (ticks / hz) / n * 1e6 }')
}

start "$run/data"
full_pid=$pid full_url=$url
body=$(wc -c <"$payload")
echo "| events in the journal | req/s | server CPU us/event | bytes on disk per event | x the body ($body B) |"
echo "|---:|---:|---:|---:|---:|"
total=0 w=0 begin=$(date +%s)
while [ "$total" -lt "$EVENTS" ] && [ $(( $(date +%s) - begin )) -lt "$MAX_SECONDS" ]; do
    w=$((w + 1))
    window $full_pid "$full_url" "$run/data" g$w
    total=$((total + n))
    awk -v t="$total" -v rps="$rps" -v us="$us" -v b="$(bytes "$run/data")" -v body="$body" \
        'BEGIN { printf "| %d | %.0f | %s | %.0f | %.2f |\n", t, rps, us, b / t, b / t / body }'
done

echo
echo "| round | CPU us/event, journal of $total events | CPU us/event, empty journal | ratio |"
echo "|---:|---:|---:|---:|"
r=0
while [ $r -lt "$PAIRS" ]; do
    r=$((r + 1))
    window $full_pid "$full_url" "$run/data" p$r
    full_us=$us
    start "$run/empty$r"
    window $pid "$url" "$run/empty$r" e$r
    kill -TERM $pid; wait $pid || true
    rm -rf "$run/empty$r"
    awk -v r=$r -v a="$full_us" -v b="$us" 'BEGIN { printf "| %d | %s | %s | %.2f |\n", r, a, b, a / b }'
done
kill -TERM $full_pid; wait $full_pid || true
