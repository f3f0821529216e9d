#!/bin/sh
# make bench: intake and end-to-end figures of certhook serve on this machine.
# (Part 2, tests/bench/drain.sh: the outbound-HTTP drain; part 3, reload.lua: reload latency;
# part 4, journal_floor.c: what the durable append a 202 waits for costs per event here;
# part 5, pg.sh: the journal in PostgreSQL, one node and two; part 6, grow.sh: the cost of an
# event and the bytes on disk as the journal grows to a million events.)
#
# For 1, 10 and 50 keep-alive connections, wrk POSTs a Cloudflare event with a new id per
# request for DURATION seconds; every request is journaled (fsync) and dispatched to a
# handler (ten handler files are loaded, as DESIGN §10 asks; one of them matches). Reported:
# requests/s and p50/p99 of the 202, end-to-end events/s, server CPU microseconds per event
# including the backlog the dispatcher drains after wrk stops, and peak RSS; then a summary
# table with the outbound drain and reload figures. The server
# runs on CPU 1 and wrk on CPU 0 when there are two. Every loop is bounded in time.
# Results: tests/bench/results/latest.md (and stdout).
#   DURATION=10 CONNS="1 10 50" BUILD=build sh tests/bench/run.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/bench
BUILD=${BUILD:-build}
DURATION=${DURATION:-10}
CONNS=${CONNS:-"1 10 50"}
SETTLE_MAX=${SETTLE_MAX:-60}
certhook=$root/$BUILD/certhook-dev
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
pin_server="" pin_client=""
if [ "$(nproc)" -ge 2 ]; then pin_server="taskset -c 1" pin_client="taskset -c 0"; fi
run=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$run"' EXIT
hz=$(getconf CLK_TCK)
mkdir -p "$here/results"
out=$here/results/latest.md

cat >"$run/certhook.conf.lua" <<CONF
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }
log = { level = "warn" }
CONF
chmod 600 "$run/certhook.conf.lua"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
pending() { sqlite3 "$run/data/certhook.db" "SELECT count(*) FROM events WHERE state <> 2" 2>/dev/null || echo 1; } # not yet handled

{
echo "# certhook bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$($certhook version); $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))."
echo "Server ${pin_server:-unpinned}, wrk ${pin_client:-unpinned}; ${DURATION}s per row; payload examples/payloads/cloudflare-validation-failed.json with a new id per request;"
echo "durable journal (WAL, synchronous=FULL); ten handler files loaded (tests/bench/handlers), one runs per event. End-to-end events/s: requests answered / (run time + time to"
echo "drain the backlog), i.e. events handled with nothing left over. CPU us/event includes that backlog."
echo
echo "| connections | req/s | p50 ms | p99 ms | errors | end-to-end events/s | server CPU us/event | backlog handled in s | peak RSS MiB |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$out"

for c in $CONNS; do
    rm -rf "$run/data" "$run/log"
    $pin_server "$certhook" serve --config "$run/certhook.conf.lua" --handlers "$here/handlers" --data "$run/data" \
        --log-level info 2>"$run/log" &
    pid=$!
    i=0
    until grep -q '"listening"' "$run/log" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || { cat "$run/log" >&2; exit 1; }; sleep 0.1
    done
    port=$(sed -n 's/.*"listen":"[^"]*:\([0-9]*\)".*/\1/p' "$run/log")
    url=http://127.0.0.1:$port/hooks/cloudflare
    BENCH_PAYLOAD=$root/examples/payloads/cloudflare-validation-failed.json BENCH_RUN=w$c \
        $pin_client wrk -t1 -c"$c" -d2s -s "$here/post.lua" "$url" >/dev/null # warm-up
    i=0; while [ "$(pending)" != 0 ] && [ $i -lt $((SETTLE_MAX * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    t0=$(cpu_ticks $pid)
    BENCH_PAYLOAD=$root/examples/payloads/cloudflare-validation-failed.json BENCH_RUN=r$c \
        $pin_client wrk -t1 -c"$c" -d"${DURATION}s" --latency -s "$here/post.lua" "$url" >"$run/wrk.txt"
    s0=$(date +%s%N)
    i=0; while [ "$(pending)" != 0 ] && [ $i -lt $((SETTLE_MAX * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    s1=$(date +%s%N)
    t1=$(cpu_ticks $pid)
    hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
    kill -TERM $pid; wait $pid || true
    line=$(grep '^BENCH' "$run/wrk.txt")
    get() { echo "$line" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
    awk -v c="$c" -v rps="$(get rps)" -v p50="$(get p50_us)" -v p99="$(get p99_us)" -v err="$(get errors)" \
        -v n="$(get requests)" -v ticks=$((t1 - t0)) -v hz="$hz" -v settle=$(( (s1 - s0) / 1000000 )) -v hwm="$hwm" \
        -v dur="$DURATION" \
        'BEGIN { printf "| %d | %.0f | %.2f | %.2f | %d | %.0f | %.1f | %.1f | %.1f |\n", c, rps, p50 / 1000, p99 / 1000, err,
                 n / (dur + settle / 1000), (ticks / hz) / n * 1e6, settle / 1000, hwm / 1024 }' >>"$out"
done
{
echo
echo "Outbound HTTP: 10,000 events already journaled when certhook starts, each delivery one HTTP call"
echo "to a local sink that answers after 100 ms (delivery.concurrency 256):"
echo
echo "| backlog | deliveries | time to drain | rate | memory |"
echo "|---|---|---:|---:|---:|"
BUILD=$BUILD sh "$here/drain.sh"
echo
echo "Reload latency: from the rename of an edited handler file to the first event handled by the"
echo "new generation (debounce 100 ms included):"
echo
echo "| reloads | median | fastest | p90 | slowest |"
echo "|---|---:|---:|---:|---:|"
(cd "$root" && CERTHOOK="$certhook" LUA_PATH="$root/tests/?.lua;;" $pin_client lua5.4 "$here/reload.lua")
echo
echo "Journal floor (tests/bench/journal_floor.c): the append a 202 waits for, SQLite alone (WAL,"
echo "synchronous=FULL, 16 KiB pages), no HTTP and no Lua, 20,000 events on the server's CPU. log: one table"
echo "(seq, id, a 2 KB blob), the least a durable log needs; unique: the same with a UNIQUE index on the random"
echo "ids; ack: the rows certhook's ack transaction writes (the events row and event_data, dedup in memory)."
echo
echo "| rows | events per commit | CPU us per event | commits/s |"
echo "|---|---:|---:|---:|"
for m in log unique ack; do
    for b in 10 50; do
        rm -f "$run"/floor-*.db*
        $pin_server "$root/$BUILD/journal_floor" "$run" 20000 $b $m | awk '{ printf "| %s | %d | %.1f | %d |\n", $1, $3, $4, $5 }'
    done
done
echo
echo "PostgreSQL journal (tests/bench/pg.sh): a PostgreSQL 15 of its own on this machine (fsync on),"
echo "50 connections in all split over the nodes, ${DURATION}s; CPU us per event of the nodes and of PostgreSQL:"
echo
DURATION=$DURATION BUILD=$BUILD sh "$here/pg.sh"
echo
echo "As the journal grows (tests/bench/grow.sh): one server on SQLite, windows of 10 s of 50 connections, each"
echo "followed by its backlog's drain, up to ${GROW_EVENTS:-1000000} events; bytes on disk: certhook.db and its WAL."
echo
EVENTS=${GROW_EVENTS:-1000000} BUILD=$BUILD sh "$here/grow.sh"
} >>"$out"

# The figures of issue 8 in one table, read back from the tables above.
{
echo
echo "Summary:"
echo
echo "| figure | value |"
echo "|---|---:|"
awk -F'|' '
    /^PostgreSQL journal/ { pg = 1 }
    pg && NF == 12 && /^\| [0-9]+ \| [0-9]/ {
        pgs = pgs sep2 ($3 + 0) " node" ($3 + 0 == 1 ? "" : "s") ", " ($2 + 0) " certificate" ($2 + 0 == 1 ? "" : "s") ": " ($5 + 0); sep2 = "; "
    }
    !pg && NF == 11 && /^\| [0-9]+ \| [0-9]/ {
        c = $2 + 0
        printf "| intake req/s, %d connection%s | %d (p99 %s ms) |\n", c, c == 1 ? "" : "s", $3, $5 + 0
        e2e = $7 + 0; cpu = $8 + 0; if ($10 + 0 > rss) rss = $10 + 0
    }
    /drained in/ { split($4, d, " "); drain = d[3] " s for 10,000 events through a 100 ms sink (" $5 + 0 " events/s)" }
    /atomic rename/ { reload = $3 }
    /^As the journal grows/ { grow = 1 }
    grow && NF == 7 && /^\| [0-9]+ \| [0-9]/ { if (!g0) g0 = $4 + 0; g1 = $4 + 0; gn = $2 + 0; gb = $5 + 0; gx = $6 + 0 }
    grow && NF == 6 && /^\| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$/ { gr = gr sep3 ($5 + 0); sep3 = ", " }
    NF == 6 && /^\| (log|unique|ack) \| [0-9]/ { m = $2; gsub(/ /, "", m); floor = floor sep m " " ($3 + 0) ": " ($4 + 0); sep = ", " }
    END {
        printf "| end-to-end events/s, backlog handled (last row) | %d |\n", e2e
        printf "| server CPU us per event (last row) | %.1f |\n", cpu
        printf "| peak RSS MiB (any row) | %.1f |\n", rss
        gsub(/^ +| +$/, "", reload); gsub(/^ +| +$/, "", drain)
        printf "| reload latency | %s |\n| outbound-HTTP drain | %s |\n", reload, drain
        printf "| journal floor, CPU us per event by rows and events per commit | %s |\n", floor
        printf "| PostgreSQL journal, accepted events/s | %s |\n", pgs
        printf "| CPU us per event, first window and at %d events | %.1f, %.1f |\n", gn, g0, g1
        printf "| bytes on disk per event at %d events | %d (%.2fx the body) |\n", gn, gb, gx
        printf "| CPU per event, that journal against an empty one (paired rounds) | %sx |\n", gr
    }' "$out"
} >>"$out.summary"
cat "$out.summary" >>"$out"
rm -f "$out.summary"
cat "$out"
