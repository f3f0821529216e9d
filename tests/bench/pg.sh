#!/bin/sh
# make bench, part 5: the journal in PostgreSQL on this machine, one node and two nodes.
#
# A PostgreSQL 15 of its own in a temporary directory (Unix socket, fsync and synchronous_commit
# on: a 202 is a durable commit), one database per row. wrk POSTs a Cloudflare event with a new id
# per request for DURATION seconds over CONNS keep-alive connections in all, split over the
# nodes (one wrk per node); each event is journaled, its inventory entry updated and dispatched to
# a handler. Two kinds of load: every event names the same certificate (one hot inventory row
# for every node), and events spread over 1,000 certificates. Reported:
# accepted events/s, p99 of the 202, end-to-end events/s (run time + the backlog drained), and
# CPU microseconds per event of the certhook nodes and of PostgreSQL. Prints a markdown table.
#   DURATION=10 CONNS=50 BUILD=build sh tests/bench/pg.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/bench
BUILD=${BUILD:-build}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
SETTLE_MAX=${SETTLE_MAX:-60}
certhook=$root/$BUILD/certhook-dev
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pgbin" ] || { echo "bench: PostgreSQL is missing (apt-get install postgresql-15)" >&2; exit 1; }
run=$(mktemp -d)
as=""
if [ "$(id -u)" = 0 ]; then chown nobody "$run"; as="runuser -u nobody --"; fi
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    (cd / && $as "$pgbin/pg_ctl" -D "$run/db" -m immediate stop >/dev/null 2>&1) || true
    rm -rf "$run"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
(cd / && $as "$pgbin/initdb" -D "$run/db" -U certhook --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null)
(cd / && $as "$pgbin/pg_ctl" -D "$run/db" -l "$run/db/log" -w -t 30 -o "-k $run -c listen_addresses= \
    -c shared_buffers=128MB -c max_connections=60" start >/dev/null)
psql() { command psql -X -q -At "postgresql://certhook@/$1?host=$run" -c "$2"; }
ticks() { # the CPU ticks of these processes (those gone count 0)
    for p in "$@"; do awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0; done | awk '{ s += $1 } END { print s + 0 }'
}
pg_pids() { pgrep -u "$(stat -c %U "$run/db")" -f postgres | tr '\n' ' '; }

cat >"$run/certhook.conf.lua" <<CONF
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
sources = { cloudflare = { provider = "cloudflare", secret = "bench-secret" } }
log = { level = "warn" }
CONF
chmod 600 "$run/certhook.conf.lua"

echo "| certificates | nodes | connections | accepted events/s | p99 ms | errors | end-to-end events/s | certhook CPU us/event | PostgreSQL CPU us/event | backlog handled in s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for certs in 1 1000; do
for nodes in 1 2; do
    db=bench${nodes}_$certs
    psql postgres "CREATE DATABASE $db"
    uri="postgresql://certhook@/$db?host=$run"
    nodepids="" ports=""
    for n in $(seq "$nodes"); do
        log=$run/log$nodes-$n
        taskset -c 1 "$certhook" serve --config "$run/certhook.conf.lua" --handlers "$here/handlers" \
            --data "$uri" --log-level info 2>"$log" &
        nodepids="$nodepids $!"
        i=0
        until grep -q '"listening"' "$log" 2>/dev/null; do
            i=$((i + 1)); [ $i -lt 100 ] || { cat "$log" >&2; exit 1; }; sleep 0.1
        done
        ports="$ports $(sed -n 's/.*"listen":"[^"]*:\([0-9]*\)".*/\1/p' "$log")"
    done
    pids="$pids $nodepids"
    per=$((CONNS / nodes))
    load() { # duration tag: one wrk per node, at once
        wpids=""
        for port in $ports; do
            BENCH_PAYLOAD=$root/examples/payloads/cloudflare-validation-failed.json BENCH_RUN=$2-$certs-$nodes-$port \
                BENCH_CERTS=$certs \
                taskset -c 0 wrk -t1 -c"$per" -d"$1" --latency -s "$here/post.lua" \
                "http://127.0.0.1:$port/hooks/cloudflare" >"$run/wrk-$port.txt" &
            wpids="$wpids $!"
        done
        for w in $wpids; do wait "$w"; done
    }
    pending() { psql "$db" "SELECT count(*) FROM certhook.events WHERE state <> 2" 2>/dev/null || echo 1; }
    settle() { i=0; while [ "$(pending)" != 0 ] && [ $i -lt $((SETTLE_MAX * 10)) ]; do sleep 0.1; i=$((i + 1)); done; }
    load 2s warm
    settle
    pgp=$(pg_pids)
    c0=$(ticks $nodepids) p0=$(ticks $pgp)
    load "${DURATION}s" run
    s0=$(date +%s%N)
    settle
    s1=$(date +%s%N)
    c1=$(ticks $nodepids) p1=$(ticks $pgp)
    for p in $nodepids; do kill -TERM "$p"; wait "$p" || true; done
    cat "$run"/wrk-*.txt | grep '^BENCH' | awk -v certs="$certs" -v nodes="$nodes" -v conns="$CONNS" -v dur="$DURATION" -v hz="$hz" \
        -v ct=$((c1 - c0)) -v pt=$((p1 - p0)) -v settle=$(( (s1 - s0) / 1000000 )) '
        { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          n += v["requests"]; rps += v["rps"]; err += v["errors"]; if (v["p99_us"] > p99) p99 = v["p99_us"] }
        END { printf "| %d | %d | %d | %.0f | %.2f | %d | %.0f | %.1f | %.1f | %.1f |\n", certs, nodes, conns, rps, p99 / 1000, err,
              n / (dur + settle / 1000), (ct / hz) / n * 1e6, (pt / hz) / n * 1e6, settle / 1000 }'
    rm -f "$run"/wrk-*.txt
done
done
