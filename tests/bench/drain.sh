#!/bin/sh
# make bench, part 2: drain 10,000 queued events whose handler each makes one HTTP call to a
# local sink that answers after 100 ms (DESIGN §10). The events are written to the journal
# before certhook starts, as a backlog would be; reported: seconds from start to the last
# delivery done, and peak RSS. Bounded: gives up after DRAIN_MAX seconds.
#   EVENTS=10000 DELAY_MS=100 BUILD=build sh tests/bench/drain.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/bench
BUILD=${BUILD:-build}
EVENTS=${EVENTS:-10000}
DELAY_MS=${DELAY_MS:-100}
DRAIN_MAX=${DRAIN_MAX:-120}
certhook=$root/$BUILD/certhook-dev
run=$(mktemp -d)
pin_server="" pin_sink=""
if [ "$(nproc)" -ge 2 ]; then pin_server="taskset -c 1" pin_sink="taskset -c 0"; fi
trap 'kill $pid $sink 2>/dev/null || true; rm -rf "$run"' EXIT
pid="" sink=""

$pin_sink "$root/$BUILD/sink" >"$run/sink.out" 2>&1 &
sink=$!
i=0; until grep -q listening "$run/sink.out" 2>/dev/null; do i=$((i + 1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done
port=$(sed -n 's/listening //p' "$run/sink.out")

cat >"$run/certhook.conf.lua" <<CONF
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }
log = { level = "warn" }
CONF
chmod 600 "$run/certhook.conf.lua"
# create the journal, then fill it with never-dispatched events (bodies only: certhook
# normalizes rows without an event once, at open, as it does for an older release's journal)
mkdir -p "$run/empty"
"$certhook" serve --config "$run/certhook.conf.lua" --handlers "$run/empty" --data "$run/data" 2>"$run/log" &
pid=$!
i=0; until [ -f "$run/data/certhook.db" ] && sqlite3 "$run/data/certhook.db" "SELECT 1 FROM events LIMIT 1" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done
kill -TERM $pid; wait $pid || true
sqlite3 "$run/data/certhook.db" "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $EVENTS)
    INSERT INTO events (id, source, provider, type, provider_type, hostname, received_at)
    SELECT 'cloudflare:drain-' || i, 'cloudflare', 'cloudflare', 'certificate.issuance.succeeded',
        'ssl.custom_hostname_certificate.issuance.succeeded', 'blog.com', unixepoch() FROM c;
    INSERT INTO event_data (seq, body) SELECT seq,
        readfile('$root/examples/payloads/cloudflare-issuance-succeeded.json') FROM events"

t0=$(date +%s%N)
BENCH_SINK_URL="http://127.0.0.1:$port/?delay=$DELAY_MS" $pin_server "$certhook" serve \
    --config "$run/certhook.conf.lua" --handlers "$here/drain" --data "$run/data" 2>>"$run/log" &
pid=$!
done_n=0; i=0
while [ "$done_n" -lt "$EVENTS" ] && [ $i -lt $((DRAIN_MAX * 20)) ]; do
    sleep 0.05; i=$((i + 1))
    done_n=$(sqlite3 "$run/data/certhook.db" "SELECT count(*) FROM all_deliveries WHERE status = 'done'" 2>/dev/null || echo 0)
done
t1=$(date +%s%N)
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
failed=$(sqlite3 "$run/data/certhook.db" "SELECT count(*) FROM deliveries WHERE status != 'done'")
awk -v n="$EVENTS" -v d="$DELAY_MS" -v done="$done_n" -v failed="$failed" -v ns=$((t1 - t0)) -v hwm="$hwm" 'BEGIN {
    printf "| %d events, handler calls a %d ms sink | %d done, %d not | drained in %.2f s | %.0f events/s | peak RSS %.1f MiB |\n",
        n, d, done, failed, ns / 1e9, done / (ns / 1e9), hwm / 1024 }'
