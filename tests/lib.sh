# lib.sh - shared helpers of the shell tests (sourced, not run):
#   ok NAME / no NAME     count a passing / failing check
#   expect STATUS NAME CMD...   run CMD, check its exit status; its stdout
#                         and stderr land in $T/out and $T/err
#   grep_err NAME PATTERN the last expect's stderr contains PATTERN
#   finish NAME           print "NAME: N passed, N failed", set the status
#   tm ARGS...            tmux on the test's own server ($SOCK, in $T)
#   wait_for PATTERN      poll tmux window t until it shows PATTERN (~30 s)
# Sets B (build dir), D3 (the binary) and T (a temp dir removed on exit).
B=${B:-build}
D3=$B/d3po
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); echo "  ok $1"; }
no() { fail=$((fail+1)); echo "  not ok $1"; }
expect() {
    want=$1; name=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"; got=$?
    if [ "$got" -eq "$want" ]; then ok "$name"; else no "$name (exit $got, wanted $want)"; cat "$T/err"; fi
}
grep_err() { if grep -q -- "$2" "$T/err"; then ok "$1"; else no "$1: stderr lacks '$2'"; cat "$T/err"; fi; }
finish() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
SOCK="$T/tmux.sock"
tm() { tmux -S "$SOCK" "$@"; }
wait_for() {
    i=0
    while [ $i -lt 150 ]; do
        tm capture-pane -p -t t >"$T/screen" 2>/dev/null
        grep -q -- "$1" "$T/screen" && return 0
        sleep 0.2; i=$((i+1))
    done
    echo "  (screen did not show '$1'):"; cat "$T/screen"; return 1
}
