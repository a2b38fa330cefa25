#!/bin/sh
# Runs every fuzz target in turn for SECONDS (default 600) each, at the lowest
# CPU priority, logging to work/logs/<target>.log (docs/FUZZING.md).
# New corpus entries go to work/<target>; corpus/<target> (the seeds) is read only.
set -u
cd "$(dirname "$0")"
secs=${SECONDS_PER_TARGET:-600}
mkdir -p work/logs
for t in ${TARGETS:-config target_match certificate cert_check revocation frames}; do
    mkdir -p "work/$t" "corpus/$t"
    dict=
    [ -f "dict/$t.dict" ] && dict="-dict=dict/$t.dict"
    echo "== $t: $(date -u +%FT%TZ)" >&2
    # shellcheck disable=SC2086
    RUSTC_BOOTSTRAP=1 nice -n 19 \
        cargo fuzz run "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 $dict \
        > "work/logs/$t.log" 2>&1
    echo "   exit $?: $(grep -E '^#[0-9]+' "work/logs/$t.log" | tail -1)" >&2
done
