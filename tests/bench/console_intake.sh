#!/bin/sh
# Intake with and without the console reading its API (README "Console"): the server pinned to
# CPU 1, wrk (50 connections, 8 s) and the reader pinned to CPU 0; a journal of ~26,000 events
# about 1,000 certificates; rounds alternate without and with GET /api/certificates and
# GET /api/events every second (the page reads one of them every 5 s). Prints each round's
# requests/s and the server's CPU per event (the backlog drained). Not part of make bench;
# from the top of the tree: sh tests/bench/console_intake.sh
root=$(cd "$(dirname "$0")/../.." && pwd)
run=$(mktemp -d)
cat >"$run/c.lua" <<CONF
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }
log = { level = "warn" }
CONF
chmod 600 "$run/c.lua"
taskset -c 1 $root/build/certhook-dev serve --config "$run/c.lua" --handlers $root/tests/bench/handlers --data "$run/data" --log-level info 2>"$run/log" &
pid=$!
i=0; until grep -q '"listening"' "$run/log" 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done
port=$(sed -n 's/.*"listen":"[^"]*:\([0-9]*\)".*/\1/p' "$run/log")
admin=$(sed -n 's/.*"admin":"[^"]*:\([0-9]*\)".*/\1/p' "$run/log")
url=http://127.0.0.1:$port/hooks/cloudflare
export BENCH_PAYLOAD=$root/examples/payloads/cloudflare-validation-failed.json BENCH_CERTS=1000
BENCH_RUN=seed taskset -c 0 wrk -t1 -c20 -d8s -s $root/tests/bench/post.lua "$url" | grep BENCH
echo "events: $(sqlite3 $run/data/certhook.db 'select count(*) from events') certs: $(sqlite3 $run/data/certhook.db 'select count(*) from inventory')"
sleep 3
for r in 1 2 3 4 5 6; do
  for mode in off on; do
    poller=
    if [ $mode = on ]; then
      ( while :; do taskset -c 0 curl -s -o /dev/null "http://127.0.0.1:$admin/api/certificates"; taskset -c 0 curl -s -o /dev/null "http://127.0.0.1:$admin/api/events"; sleep 1; done ) &
      poller=$!
    fi
    t0=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    line=$(BENCH_RUN=r$r$mode taskset -c 0 wrk -t1 -c50 -d8s -s $root/tests/bench/post.lua "$url" | grep BENCH)
    [ -n "$poller" ] && kill $poller
    i=0; while [ "$(sqlite3 $run/data/certhook.db 'select count(*) from events where state <> 2')" != 0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    t1=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    n=$(echo "$line" | sed 's/.*requests=\([0-9]*\).*/\1/')
    echo "round $r console=$mode $line server_cpu_us_per_event=$(( (t1 - t0) * 10000 * 1000 / n / 1000 ))"
    sleep 2
  done
done
curl -s -o /dev/null -w "api/certificates %{time_total}s %{size_download}B\n" "http://127.0.0.1:$admin/api/certificates"
curl -s -o /dev/null -w "api/events %{time_total}s %{size_download}B\n" "http://127.0.0.1:$admin/api/events"
kill -TERM $pid; wait $pid
rm -rf "$run"
