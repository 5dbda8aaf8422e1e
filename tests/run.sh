#!/bin/sh
# run.sh - runs every test binary and test script, prints one summary line
# "tests: N passed, N failed" and fails when any test failed.
B=${B:-build}
pass=0; fail=0; failed=""
for t in "$B"/tests/test_*; do
    case "$t" in *.o|*.d) continue;; esac
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "== $name"
    if "$t"; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed $name"; fi
done
for s in tests/test_*.sh; do
    [ -f "$s" ] || continue
    name=$(basename "$s")
    echo "== $name"
    if B="$B" sh "$s"; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed $name"; fi
done
[ -n "$failed" ] && echo "failed:$failed"
echo "tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
