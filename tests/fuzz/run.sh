#!/bin/sh
# run.sh -- runs one libFuzzer target for `make fuzz` (tests/fuzz/fuzz.mk):
#   run.sh TARGET SECONDS "LIBFUZZER FLAGS" SEEDDIR...
# The seeds are copied into the corpus, $FUZZ_DIR/corpus/TARGET (kept between runs, named by
# content like the inputs libFuzzer adds); tests/fuzz/regressions/TARGET is read as well.
# One process, no forks. Findings go to $FUZZ_DIR/artifacts/TARGET/, the output to
# $FUZZ_DIR/logs/TARGET.<time>.log. Exits non-zero, naming the input, after a finding.
set -u
t=$1 secs=$2 flags=$3
shift 3
dir=${FUZZ_DIR:-build/fuzz}
corpus=$dir/corpus/$t art=$dir/artifacts/$t
log=$dir/logs/$t.$(date +%Y%m%d-%H%M%S).log
mkdir -p "$corpus" "$art" "$dir/logs" "tests/fuzz/regressions/$t"
for d in "$@"; do
    for f in "$d"/*; do
        [ -f "$f" ] || continue
        sum=$(sha1sum "$f" | cut -c1-40)
        [ -e "$corpus/$sum" ] || cp "$f" "$corpus/$sum"
    done
done
start=$dir/logs/.start.$t status=$dir/logs/.status.$t
touch "$start"
echo "fuzz: $t for ${secs}s (log: $log)"
# shellcheck disable=SC2086 # flags are words
{
    UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}" "$dir/fuzz_$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$art/" $flags "$corpus" "tests/fuzz/regressions/$t" 2>&1
    echo $? >"$status"
} | tee "$log" | grep --line-buffered -E '^#[0-9]+.*(pulse|DONE)|^==[0-9]+==ERROR|^SUMMARY'
rc=$(cat "$status")
rm -f "$status"
if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t FAILED (status $rc); the input that did it:"
    find "$art" -type f -newer "$start" 2>/dev/null | sed 's/^/    /'
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*invariant does not hold)' "$log" | head -5 |
        sed 's/^/    /'
    echo "    reproduce: $dir/fuzz_$t <input>   or   build/unit/test_fuzz_$t <input>"
    rm -f "$start"
    exit 1
fi
rm -f "$start"
grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)' "$log" | sed 's/^/    /'
exit 0
