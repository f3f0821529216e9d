#!/bin/sh
# Runs every test and ends with one line "N passed, M failed, K skipped" (exit 1 if any
# failed; a skipped test -- TAP's "# SKIP": busted's pending, a fuzz replay folder with no
# input yet -- passed nothing):
#   C unit tests (build/unit/test_*), then busted specs (tests/spec) and end-to-end tests
#   (tests/e2e, which start `certhook serve`). All of them print TAP.
# `tests/run.sh memcheck` runs tests/memcheck instead, with the CLI under valgrind.
# Environment: BUILD (build dir, build/san for SANITIZE=1), LUA (lua5.4).
BUILD=${BUILD:-build}
LUA=${LUA:-lua5.4}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0
failed=0
skipped=0

tally() { # NAME STATUS TAPFILE
    k=$(grep -c '^ok .*# SKIP' "$3")
    p=$(($(grep -c '^ok ' "$3") - k))
    f=$(grep -c '^not ok ' "$3")
    skipped=$((skipped + k))
    if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "not ok - $1 exited with status $2"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
}

suites="tests/spec tests/e2e"
units="$root/$BUILD"/unit/test_*
if [ "${1:-}" = memcheck ]; then
    suites=tests/memcheck
    units=
fi

for t in $units; do
    [ -x "$t" ] || continue
    echo "# $(basename "$t")"
    "$t" >"$out/unit.tap" 2>&1
    status=$?
    cat "$out/unit.tap"
    tally "$(basename "$t")" "$status" "$out/unit.tap"
done

export CERTHOOK="$root/$BUILD/certhook-dev"
[ "${1:-}" = memcheck ] && CERTHOOK="$root/$BUILD/certhook-valgrind"
export LUA_PATH="$root/lua/?.lua;$root/lua/?/init.lua;$root/tests/?.lua;;"
export LUA_CPATH="$root/$BUILD/?.so;;"
if [ "$BUILD" != "${BUILD%san}" ]; then # the sanitizer build: busted itself loads the module
    LD_PRELOAD=$(cc -print-file-name=libasan.so)
    export LD_PRELOAD ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1"
fi
cd "$root" || exit 1
echo "# busted: $suites"
# shellcheck disable=SC2086
"$LUA" /usr/bin/busted --output=TAP --pattern=_spec $suites >"$out/busted.tap" 2>"$out/busted.err"
status=$?
cat "$out/busted.tap"
# what handlers run in-process logged (failures on purpose, mostly): shown when something failed
if [ "$status" -ne 0 ] && [ -s "$out/busted.err" ]; then
    echo "# stderr of the specs:"
    sed 's/^/# /' "$out/busted.err"
fi
tally busted "$status" "$out/busted.tap"

# Parity: the specs of events, deliveries, intake, providers, handlers' state, reloads, metrics
# and the inventory again, the servers' journal in a PostgreSQL of their own
# (tests/helpers/server.lua); those about SQLite itself, or crash recovery (which on PostgreSQL
# waits for the killed server's lease: postgres_spec's), are tagged.
if [ "${1:-}" != memcheck ]; then
    parity="tests/e2e/event_spec.lua tests/e2e/once_spec.lua tests/e2e/inventory_spec.lua
            tests/e2e/watchdog_spec.lua tests/e2e/certificate_examples_spec.lua
            tests/e2e/delivery_spec.lua tests/e2e/serve_spec.lua tests/e2e/providers_spec.lua
            tests/e2e/samples_spec.lua tests/e2e/lua_provider_spec.lua tests/e2e/reload_spec.lua
            tests/e2e/metrics_spec.lua tests/e2e/poller_spec.lua"
    echo "# busted, journal in PostgreSQL: $(echo $parity)"
    # shellcheck disable=SC2086
    CERTHOOK_TEST_JOURNAL=postgresql "$LUA" /usr/bin/busted --output=TAP --exclude-tags=sqlite \
        $parity >"$out/parity.tap" 2>"$out/parity.err"
    status=$?
    sed 's/^\(not \)\{0,1\}ok [0-9]* - /&[postgresql] /' "$out/parity.tap"
    if [ "$status" -ne 0 ] && [ -s "$out/parity.err" ]; then
        sed 's/^/# /' "$out/parity.err"
    fi
    tally "busted (postgresql)" "$status" "$out/parity.tap"
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
