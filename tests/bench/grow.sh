#!/bin/sh
# make bench, part 6: the cost of an event as the journal grows. One certhook serve on SQLite
# takes windows of WINDOW seconds of 50 keep-alive connections (a new id per request, so every
# event is journaled and dispatched), each followed by the backlog's drain, until EVENTS events
# are in the journal (or MAX_SECONDS have passed). Each row: events journaled so far, the
# window's requests/s, server CPU microseconds per event (the drain included), and the journal's
# bytes on disk per event (certhook.db + its WAL) against the payload's size. Prints a markdown
# table. Every loop is bounded in time.
#   EVENTS=1000000 WINDOW=10 MAX_SECONDS=900 BUILD=build sh tests/bench/grow.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/bench
BUILD=${BUILD:-build}
EVENTS=${EVENTS:-1000000}
WINDOW=${WINDOW:-10}
MAX_SECONDS=${MAX_SECONDS:-900}
CONNS=${CONNS:-50}
SETTLE_MAX=${SETTLE_MAX:-60}
certhook=${CERTHOOK:-$root/$BUILD/certhook-dev}
payload=$root/examples/payloads/cloudflare-validation-failed.json
pin_server="" pin_client=""
if [ "$(nproc)" -ge 2 ]; then pin_server="taskset -c 1" pin_client="taskset -c 0"; fi
run=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$run"' EXIT
hz=$(getconf CLK_TCK)
cat >"$run/certhook.conf.lua" <<CONF
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }
log = { level = "warn" }
CONF
chmod 600 "$run/certhook.conf.lua"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
pending() { sqlite3 "$run/data/certhook.db" "SELECT count(*) FROM events WHERE state <> 2" 2>/dev/null || echo 1; }
bytes() { cat "$run/data"/certhook.db* 2>/dev/null | wc -c; }

$pin_server "$certhook" serve --config "$run/certhook.conf.lua" --handlers "$here/handlers" \
    --data "$run/data" --log-level info 2>"$run/log" &
pid=$!
i=0
until grep -q '"listening"' "$run/log" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { cat "$run/log" >&2; exit 1; }; sleep 0.1
done
port=$(sed -n 's/.*"listen":"[^"]*:\([0-9]*\)".*/\1/p' "$run/log")
url=http://127.0.0.1:$port/hooks/cloudflare
body=$(wc -c <"$payload")
echo "| events in the journal | req/s | server CPU us/event | bytes on disk per event | x the body ($body B) |"
echo "|---:|---:|---:|---:|---:|"
total=0 w=0 start=$(date +%s)
while [ "$total" -lt "$EVENTS" ] && [ $(( $(date +%s) - start )) -lt "$MAX_SECONDS" ]; do
    w=$((w + 1))
    t0=$(cpu_ticks $pid)
    BENCH_PAYLOAD=$payload BENCH_RUN=g$w $pin_client wrk -t1 -c"$CONNS" -d"${WINDOW}s" -s "$here/post.lua" "$url" >"$run/wrk.txt"
    i=0; while [ "$(pending)" != 0 ] && [ $i -lt $((SETTLE_MAX * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    t1=$(cpu_ticks $pid)
    n=$(sed -n 's/^BENCH requests=\([0-9]*\).*/\1/p' "$run/wrk.txt")
    rps=$(sed -n 's/^BENCH .* rps=\([0-9.]*\).*/\1/p' "$run/wrk.txt")
    total=$((total + n))
    awk -v t="$total" -v rps="$rps" -v n="$n" -v ticks=$((t1 - t0)) -v hz="$hz" -v b="$(bytes)" -v body="$body" \
        'BEGIN { printf "| %d | %.0f | %.1f | %.0f | %.2f |\n", t, rps, (ticks / hz) / n * 1e6, b / t, b / t / body }'
done
kill -TERM $pid; wait $pid || true
