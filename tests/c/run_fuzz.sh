#!/bin/sh
# run_fuzz.sh FUZZER SEED_DIR SECONDS: time-boxed libFuzzer run of the
# tender's image parsers. Works on a copy of the seed corpus, prints one
# summary line, and fails (exit 1) on any crash, leak or timeout.
set -u
fuzzer=$1 seeds=$2 secs=$3
work=$(dirname "$fuzzer")/fuzz-work
mkdir -p "$work/corpus" "$work/artifacts"
cp "$seeds"/* "$work/corpus/" 2>/dev/null
log="$work/fuzz.log"
"$fuzzer" -max_total_time="$secs" -timeout=5 -rss_limit_mb=1024 \
    -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" >"$log" 2>&1
rc=$?
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
if [ $rc -ne 0 ]; then
    tail -40 "$log"
    echo "tender fuzz: FAIL after ${runs:-?} runs (see $log and $work/artifacts/)"
    exit 1
fi
echo "tender fuzz: ${runs:-?} runs in ${secs} s, no crashes"
