#!/bin/sh
# test_fuzz.sh - builds the libFuzzer target of the safetensors parser (so it
# cannot rot) and runs it briefly on the seed corpus; `make fuzz` runs longer.
B=${B:-build}
[ -n "$D3PO_ASAN" ] && { echo "  skipped under check-asan (the fuzzer has its own sanitizers)"; exit 0; }
make --no-print-directory -s B="$B" FUZZ_TIME=${FUZZ_TIME:-10} fuzz >"$B/fuzz.log" 2>&1
rc=$?
tail -n 3 "$B/fuzz.log"
[ $rc -eq 0 ] || { echo "  fuzz run failed (log: $B/fuzz.log)"; exit 1; }
