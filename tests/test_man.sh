#!/bin/sh
# test_man.sh - the man pages render with groff without a single warning.
fail=0
for m in man/*.1 man/*.5; do
    [ -f "$m" ] || continue
    out=$(groff -ww -man -Tutf8 "$m" 2>&1 >/dev/null)
    if [ -n "$out" ]; then echo "  not ok $m"; echo "$out"; fail=$((fail+1)); else echo "  ok $m"; fi
done
[ "$fail" -eq 0 ]
